package storetest

import (
	"slices"
	"testing"

	"runhub/store"
)

// testProjectSlackChannels: a new project allows no Slack channel; the
// operator's allow-list is stored per project, read back by GetProject and
// ListProjects, replaced as a whole, and cleared by an empty list; an
// unknown project is ErrNotFound.
func testProjectSlackChannels(t *testing.T, s store.Store) {
	ctx := t.Context()
	p1, err := s.CreateProject(ctx, "Acme")
	noErr(t, err, "CreateProject")
	p2, err := s.CreateProject(ctx, "Beta")
	noErr(t, err, "CreateProject")

	channels := func(id int64) []string {
		t.Helper()
		p, err := s.GetProject(ctx, id)
		noErr(t, err, "GetProject")
		if p.SlackChannels == nil {
			t.Fatalf("project %d: SlackChannels is nil, want a (possibly empty) list", id)
		}
		return p.SlackChannels
	}
	if c := p1.SlackChannels; c == nil || len(c) != 0 {
		t.Fatalf("CreateProject: SlackChannels = %#v, want empty", c)
	}
	if c := channels(p1.ID); len(c) != 0 {
		t.Fatalf("new project allows %v, want no channel", c)
	}
	if p, _ := s.GetProject(ctx, p1.ID); p.AllowsSlackChannel("C1") || p.AllowsSlackChannel("") {
		t.Fatal("a new project allows a channel")
	}

	got, err := s.SetProjectSlackChannels(ctx, p1.ID, []string{"C1", "C2"})
	noErr(t, err, "SetProjectSlackChannels")
	if got.ID != p1.ID || got.Name != "Acme" || !got.CreatedAt.Equal(p1.CreatedAt) || !slices.Equal(got.SlackChannels, []string{"C1", "C2"}) {
		t.Fatalf("SetProjectSlackChannels = %+v", got)
	}
	if c := channels(p1.ID); !slices.Equal(c, []string{"C1", "C2"}) {
		t.Fatalf("GetProject channels = %v, want [C1 C2]", c)
	}
	if p, _ := s.GetProject(ctx, p1.ID); !p.AllowsSlackChannel("C2") || p.AllowsSlackChannel("c2") || p.AllowsSlackChannel("C3") {
		t.Fatalf("AllowsSlackChannel on %v is wrong", p.SlackChannels)
	}
	if c := channels(p2.ID); len(c) != 0 {
		t.Fatalf("the other project allows %v, want nothing", c)
	}
	list, err := s.ListProjects(ctx)
	noErr(t, err, "ListProjects")
	for _, p := range list {
		want := []string{}
		if p.ID == p1.ID {
			want = []string{"C1", "C2"}
		}
		if (p.ID == p1.ID || p.ID == p2.ID) && !slices.Equal(p.SlackChannels, want) {
			t.Errorf("ListProjects: project %d channels %#v, want %v", p.ID, p.SlackChannels, want)
		}
	}

	_, err = s.SetProjectSlackChannels(ctx, p1.ID, []string{"C9"})
	noErr(t, err, "SetProjectSlackChannels (replace)")
	if c := channels(p1.ID); !slices.Equal(c, []string{"C9"}) {
		t.Fatalf("after replace: %v, want [C9]", c)
	}
	got, err = s.SetProjectSlackChannels(ctx, p1.ID, nil)
	noErr(t, err, "SetProjectSlackChannels (clear)")
	if got.SlackChannels == nil || len(got.SlackChannels) != 0 || len(channels(p1.ID)) != 0 {
		t.Fatalf("after clear: %#v / %v, want empty", got.SlackChannels, channels(p1.ID))
	}

	_, err = s.SetProjectSlackChannels(ctx, p1.ID+p2.ID+1000, []string{"C1"})
	wantErr(t, err, store.ErrNotFound, "SetProjectSlackChannels(unknown)")
}
