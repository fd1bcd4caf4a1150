package store

import (
	"fmt"
)

// The sequenced event ingest (POST .../event_stream/) numbers events with
// the sender's own sequence, counted per run from 1 and kept in the store
// beside the run, separate from the run's seq: the sender's seq is the
// idempotency key of a line, so a line sent again (a retried upload, the
// same upload reaching another node, a sender restarted from its buffer)
// is counted as a duplicate and never stored twice. The check and the
// append happen in one transaction that also advances last_accepted_seq.

// IngestLine is one event line of the sequenced ingest: the sender's seq
// (≥ 1) and the event, parsed as a log entry.
type IngestLine struct {
	Seq   int64
	Entry LogEntry
}

// IngestState is a run's ingest sequence as the store keeps it.
type IngestState struct {
	// LastAccepted is the highest sender seq accepted so far (0: none).
	LastAccepted int64
	// Complete: the sender declared its stream finished
	// (_posthog/stream_complete); no event is accepted after it.
	Complete bool
}

// Reasons of an IngestConflict.
const (
	IngestGap      = "gap"       // a line skipped a seq
	IngestComplete = "complete"  // a line after the stream was completed
	IngestFinalSeq = "final_seq" // a completion whose final_seq is not last_accepted_seq
)

// IngestConflict is why the ingest refused a line (a 409): the lines
// before it stay accepted.
type IngestConflict struct {
	Reason       string // IngestGap, IngestComplete or IngestFinalSeq
	LastAccepted int64  // the sender resumes after it
	Got          int64  // the seq (gap) or final_seq (final_seq) the sender sent
}

func (c *IngestConflict) Error() string {
	switch c.Reason {
	case IngestGap:
		return fmt.Sprintf("Event sequence gap: expected %d, received %d", c.LastAccepted+1, c.Got)
	case IngestFinalSeq:
		return fmt.Sprintf("Completion final sequence %d does not match last accepted sequence %d", c.Got, c.LastAccepted)
	default:
		return "Event stream is already complete"
	}
}

// IngestResult is what one ingest write did.
type IngestResult struct {
	// Run and Events are the run after the write and the events it stored
	// (to publish), as of any mutation; Events is empty when nothing new
	// was accepted.
	MutationResult
	Accepted  int // lines stored (or published, for ephemeral ones) now
	Duplicate int // lines whose seq was already accepted
	State     IngestState
	// Conflict is the line the write stopped at, nil when it took every
	// line; the lines before it are committed.
	Conflict *IngestConflict
}

// SequenceIngest is the rule of an ingest write, applied by every backend
// inside its transaction: given the run's ingest state, it returns the
// entries to append (each the next seq after the last accepted), how many
// lines were duplicates, the state after the write, and the conflict that
// stopped it, if any. Lines after a conflict are not looked at.
func SequenceIngest(st IngestState, lines []IngestLine) (accept []LogEntry, duplicate int, after IngestState, conflict *IngestConflict) {
	after = st
	if st.Complete && len(lines) > 0 {
		return nil, 0, after, &IngestConflict{Reason: IngestComplete, LastAccepted: st.LastAccepted}
	}
	for _, l := range lines {
		switch {
		case l.Seq <= after.LastAccepted:
			duplicate++
		case l.Seq == after.LastAccepted+1:
			accept = append(accept, l.Entry)
			after.LastAccepted = l.Seq
		default:
			return accept, duplicate, after, &IngestConflict{Reason: IngestGap, LastAccepted: after.LastAccepted, Got: l.Seq}
		}
	}
	return accept, duplicate, after, nil
}

// CompleteIngestRule is the rule of a completion line: it completes the
// stream when finalSeq is the last accepted seq. A completion repeated
// with the same final_seq (a retried upload) changes nothing and is no
// conflict; any other final_seq is.
func CompleteIngestRule(st IngestState, finalSeq int64) (IngestState, *IngestConflict) {
	if finalSeq != st.LastAccepted {
		return st, &IngestConflict{Reason: IngestFinalSeq, LastAccepted: st.LastAccepted, Got: finalSeq}
	}
	st.Complete = true
	return st, nil
}
