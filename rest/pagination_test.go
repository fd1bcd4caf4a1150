package rest

import (
	"fmt"
	"testing"
)

// An offset near MaxInt64 must not wrap next back to the first page (a
// client following next would loop for ever): beyond the end the page is
// empty and next is null, for tasks and runs alike.
func TestPaginationHugeOffset(t *testing.T) {
	e := newEnv(t, nil)
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})["id"].(string)
	e.createRun(e.p1, e.writeKey, task, nil)
	e.createRun(e.p1, e.writeKey, task, nil)
	for _, path := range []string{e.tasksPath(e.p1), e.runsPath(e.p1, task)} {
		for _, q := range []string{
			"offset=9223372036854775807",
			"offset=9223372036854775000",
			"offset=9223372036854775000&limit=1000",
			"offset=9223372036854775807&limit=1",
			"offset=2",
		} {
			t.Run(fmt.Sprintf("%s?%s", path, q), func(t *testing.T) {
				p := decodeList(t, e.do(req{Method: "GET", Path: path + "/?" + q, Key: e.readKey}))
				if len(p.Results) != 0 || p.Next != nil || p.Count == 0 {
					t.Errorf("count %d, %d results, next %v; want an empty page, next null", p.Count, len(p.Results), p.Next)
				}
				if p.Previous == nil {
					t.Errorf("previous is null beyond the end")
				}
			})
		}
	}
}
