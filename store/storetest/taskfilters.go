package storetest

import (
	"slices"
	"testing"

	"runhub/store"
)

// testTaskFilters checks the task list's filters, orderings and the
// archived flag: every backend selects, counts and orders the same tasks,
// never one of another project or a deleted one.
func testTaskFilters(t *testing.T, s store.Store) {
	ctx := t.Context()
	pa, err := s.CreateProject(ctx, "Filters")
	noErr(t, err, "CreateProject")
	pb, err := s.CreateProject(ctx, "Other")
	noErr(t, err, "CreateProject")
	newTask := func(project int64, nt store.NewTask) *store.Task {
		t.Helper()
		if nt.OriginProduct == "" {
			nt.OriginProduct = "user_created"
		}
		task, err := s.CreateTask(ctx, project, nt)
		noErr(t, err, "CreateTask")
		return task
	}
	run := func(task *store.Task, status string) {
		t.Helper()
		_, err := s.CreateRun(ctx, pa.ID, task.ID, store.NewRun{Status: status})
		noErr(t, err, "CreateRun")
	}
	var key1, key2 int64 = 1, 2
	t1 := newTask(pa.ID, store.NewTask{Title: "Fix login bug", Description: "passwords with 100% spaces", Repository: ptr("acme/web"), CreatedBy: &key1})
	t2 := newTask(pa.ID, store.NewTask{Title: "Add dark mode", Description: "on the Settings page", Repository: ptr("acme/api"),
		OriginProduct: "error_tracking", CreatedBy: &key2, Internal: true})
	t3 := newTask(pa.ID, store.NewTask{Title: "Refactor LOGIN form", CreatedBy: &key1})
	newTask(pb.ID, store.NewTask{Title: "login elsewhere", Repository: ptr("acme/web"), CreatedBy: &key1})
	gone := newTask(pa.ID, store.NewTask{Title: "login deleted", Repository: ptr("acme/web"), CreatedBy: &key1})
	noErr(t, s.DeleteTask(ctx, pa.ID, gone.ID), "DeleteTask")
	run(t1, store.StatusCompleted)
	run(t1, store.StatusQueued) // the latest run decides
	run(t2, store.StatusCompleted)

	got, err := s.GetTask(ctx, pa.ID, t2.ID)
	noErr(t, err, "GetTask")
	if got.CreatedBy == nil || *got.CreatedBy != key2 || !got.Internal || got.Archived || got.ArchivedAt != nil {
		t.Errorf("task read back: created_by %v internal %v archived %v at %v", got.CreatedBy, got.Internal, got.Archived, got.ArchivedAt)
	}

	t.Run("archived", func(t *testing.T) {
		yes, no := true, false
		a, err := s.UpdateTask(ctx, pa.ID, t3.ID, store.TaskPatch{Archived: &yes})
		noErr(t, err, "UpdateTask archived")
		if !a.Archived || a.ArchivedAt == nil {
			t.Fatalf("archived %v at %v, want true and a time", a.Archived, a.ArchivedAt)
		}
		checkWireTime(t, "archived_at", *a.ArchivedAt)
		again, err := s.UpdateTask(ctx, pa.ID, t3.ID, store.TaskPatch{Archived: &yes})
		noErr(t, err, "UpdateTask archived again")
		if again.ArchivedAt == nil || !again.ArchivedAt.Equal(*a.ArchivedAt) {
			t.Errorf("archiving again moved archived_at: %v → %v", a.ArchivedAt, again.ArchivedAt)
		}
		un, err := s.UpdateTask(ctx, pa.ID, t1.ID, store.TaskPatch{Archived: &no})
		noErr(t, err, "UpdateTask unarchived")
		if un.Archived || un.ArchivedAt != nil {
			t.Errorf("never archived: archived %v at %v", un.Archived, un.ArchivedAt)
		}
		back, err := s.GetTask(ctx, pa.ID, t3.ID)
		noErr(t, err, "GetTask")
		if !back.Archived || back.ArchivedAt == nil || !back.ArchivedAt.Equal(*a.ArchivedAt) || back.CreatedBy == nil || *back.CreatedBy != key1 {
			t.Errorf("read back: archived %v at %v created_by %v", back.Archived, back.ArchivedAt, back.CreatedBy)
		}
	})
	// Last change: t1 (its unarchive above is a no-op PATCH that still
	// stamps updated_at), so -updated_at lists t1, t3, t2.
	_, err = s.UpdateTask(ctx, pa.ID, t1.ID, store.TaskPatch{Title: ptr("Fix login bug")})
	noErr(t, err, "UpdateTask")

	yes, no := true, false
	names := map[string]string{t1.ID: "t1", t2.ID: "t2", t3.ID: "t3"}
	for _, tc := range []struct {
		name  string
		q     store.TaskQuery
		want  []string
		total int64
	}{
		{"none", store.TaskQuery{}, []string{"t3", "t2", "t1"}, 3},
		{"repository", store.TaskQuery{Repository: ptr("acme/web")}, []string{"t1"}, 1},
		{"repository unknown", store.TaskQuery{Repository: ptr("acme/none")}, nil, 0},
		{"origin_product", store.TaskQuery{OriginProduct: ptr("error_tracking")}, []string{"t2"}, 1},
		{"created_by", store.TaskQuery{CreatedBy: &key1}, []string{"t3", "t1"}, 2},
		{"created_by paged", store.TaskQuery{CreatedBy: &key1, Limit: 1, Offset: 1}, []string{"t1"}, 2},
		{"status of the latest run", store.TaskQuery{Status: ptr(store.StatusQueued)}, []string{"t1"}, 1},
		{"status completed", store.TaskQuery{Status: ptr(store.StatusCompleted)}, []string{"t2"}, 1},
		{"status nobody has", store.TaskQuery{Status: ptr(store.StatusInProgress)}, nil, 0},
		{"search ignores case", store.TaskQuery{Search: "login"}, []string{"t3", "t1"}, 2},
		{"search the description", store.TaskQuery{Search: "SETTINGS"}, []string{"t2"}, 1},
		{"search takes % as it is", store.TaskQuery{Search: "100%"}, []string{"t1"}, 1},
		{"search takes _ as it is", store.TaskQuery{Search: "_"}, nil, 0},
		{"archived", store.TaskQuery{Archived: &yes}, []string{"t3"}, 1},
		{"not archived", store.TaskQuery{Archived: &no}, []string{"t2", "t1"}, 2},
		{"internal", store.TaskQuery{Internal: &yes}, []string{"t2"}, 1},
		{"not internal", store.TaskQuery{Internal: &no}, []string{"t3", "t1"}, 2},
		{"combined", store.TaskQuery{CreatedBy: &key1, Archived: &no, Repository: ptr("acme/web")}, []string{"t1"}, 1},
		{"ids", store.TaskQuery{IDs: []string{t1.ID, t3.ID, unknownUUID, gone.ID}}, []string{"t3", "t1"}, 2},
		{"ids none", store.TaskQuery{IDs: []string{}}, nil, 0},
		{"ordering created_at", store.TaskQuery{Ordering: "created_at"}, []string{"t1", "t2", "t3"}, 3},
		{"ordering title", store.TaskQuery{Ordering: "title"}, []string{"t2", "t1", "t3"}, 3},
		{"ordering -title", store.TaskQuery{Ordering: "-title"}, []string{"t3", "t1", "t2"}, 3},
		{"ordering task_number", store.TaskQuery{Ordering: "task_number"}, []string{"t1", "t2", "t3"}, 3},
		{"ordering -task_number", store.TaskQuery{Ordering: "-task_number"}, []string{"t3", "t2", "t1"}, 3},
		{"ordering -updated_at", store.TaskQuery{Ordering: "-updated_at"}, []string{"t1", "t3", "t2"}, 3},
		{"ordering updated_at", store.TaskQuery{Ordering: "updated_at"}, []string{"t2", "t3", "t1"}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.q.Limit == 0 {
				tc.q.Limit = 100
			}
			list, total, err := s.ListTasks(ctx, pa.ID, tc.q)
			noErr(t, err, "ListTasks")
			var got []string
			for _, task := range list {
				got = append(got, names[task.ID])
			}
			if !slices.Equal(got, tc.want) || total != tc.total {
				t.Errorf("ListTasks = %v total %d, want %v total %d", got, total, tc.want, tc.total)
			}
		})
	}
	t.Run("unknown ordering", func(t *testing.T) {
		if _, _, err := s.ListTasks(ctx, pa.ID, store.TaskQuery{Limit: 10, Ordering: "seq; DROP TABLE tasks"}); err == nil {
			t.Error("an unknown ordering was accepted")
		}
	})
}
