package slacktest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func call(t *testing.T, f *Fake, method string, body any, out any) {
	t.Helper()
	var req *http.Request
	if form, ok := body.(url.Values); ok {
		req, _ = http.NewRequest("POST", f.URL+"/"+method, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		b, _ := json.Marshal(body)
		req, _ = http.NewRequest("POST", f.URL+"/node1/"+method, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
}

type repliesPage struct {
	OK       bool
	Error    string
	HasMore  bool `json:"has_more"`
	Messages []struct {
		TS       string
		Text     string
		Metadata *struct {
			EventType    string            `json:"event_type"`
			EventPayload map[string]string `json:"event_payload"`
		}
	}
	Meta struct {
		NextCursor string `json:"next_cursor"`
	} `json:"response_metadata"`
}

// TestRepliesAsSlackDocumentsThem: the thread read lists the parent
// first and the replies oldest first, a page of limit at a time with a
// cursor, and carries metadata only with include_all_metadata; posts get
// distinct ts values and are recorded with the node prefix they came
// through.
func TestRepliesAsSlackDocumentsThem(t *testing.T) {
	f := Start(t)
	for i := range 5 {
		var out struct {
			OK bool
			TS string
		}
		call(t, f, "chat.postMessage", map[string]any{"channel": "C1", "thread_ts": "1.0", "text": fmt.Sprint(i),
			"metadata": map[string]any{"event_type": "runhub_relay", "event_payload": map[string]string{"relay_id": fmt.Sprint("r", i)}}}, &out)
		if !out.OK || out.TS == "" {
			t.Fatalf("post %d: %+v", i, out)
		}
	}
	posts, _ := f.Snapshot()
	if len(posts) != 5 || posts[0].Node != "node1" || posts[0].TS == posts[1].TS {
		t.Fatalf("posts %+v", posts)
	}

	var texts []string
	cursor, pages := "", 0
	for {
		form := url.Values{"channel": {"C1"}, "ts": {"1.0"}, "limit": {"2"}, "include_all_metadata": {"true"}}
		if cursor != "" {
			form.Set("cursor", cursor)
		}
		var page repliesPage
		call(t, f, "conversations.replies", form, &page)
		pages++
		if !page.OK || len(page.Messages) > 2 || page.HasMore != (page.Meta.NextCursor != "") {
			t.Fatalf("page %d: %+v", pages, page)
		}
		for _, m := range page.Messages {
			texts = append(texts, m.Text)
			if m.TS != "1.0" && (m.Metadata == nil || m.Metadata.EventPayload["relay_id"] != "r"+m.Text) {
				t.Fatalf("reply %q without its metadata: %+v", m.Text, m.Metadata)
			}
		}
		if cursor = page.Meta.NextCursor; cursor == "" {
			break
		}
	}
	if got := strings.Join(texts[1:], ","); pages != 3 || got != "0,1,2,3,4" {
		t.Fatalf("%d pages, replies %q; want 3 pages, the parent then 0..4", pages, got)
	}

	var page repliesPage
	call(t, f, "conversations.replies", url.Values{"channel": {"C1"}, "ts": {"1.0"}}, &page)
	if len(page.Messages) != 6 || page.HasMore || page.Messages[1].Metadata != nil {
		t.Fatalf("without include_all_metadata: %+v; want every message, none with metadata", page)
	}
	for _, bad := range []url.Values{{"channel": {"C1"}, "ts": {"1.0"}, "cursor": {"junk"}}, {"channel": {"C1"}, "ts": {"1.0"}, "limit": {"0"}}} {
		var page repliesPage
		call(t, f, "conversations.replies", bad, &page)
		if page.OK || page.Error == "" {
			t.Fatalf("%v: %+v, want an error", bad, page)
		}
	}
}
