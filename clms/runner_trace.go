package clms

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// The runner's step trace: at debug level the runner logs every message it
// receives and steps, every write with how long it took, every record
// applied and every action, so that one slow failover can be read step by
// step from the nodes' logs (cibench failover --keep-logs with
// CI_LOG_LEVEL=debug; cinode stamps its log lines to the microsecond). That
// is how the second raft round of a NODEDOWN was found holding the runners'
// loops in the middle of a failover (docs/CLMS.md, "Where a failover's
// milliseconds go"). Off, it costs one bool test per step.

// tracing says whether the runner's logger takes debug lines; decided once.
func tracing(l *slog.Logger) bool { return l.Enabled(context.Background(), slog.LevelDebug) }

func (r *Runner) traceMsg(what string, m *Message) {
	if r.traced {
		r.log.Debug("clms: "+what, "message", traceMessage(m))
	}
}

func (r *Runner) traceDrained(rd *Ready, saved time.Duration) {
	if !r.traced {
		return
	}
	if len(rd.Entries) > 0 || rd.MustSync {
		r.log.Debug("clms: saved", "entries", len(rd.Entries), "sync", rd.MustSync, "took", saved)
	}
	if len(rd.Applied) > 0 {
		r.log.Debug("clms: applied", "records", traceRecords(rd.Applied))
	}
	for _, a := range rd.Actions {
		r.log.Debug("clms: action", "action", a.String())
	}
}

// traceMessage is m with its raft message's type, entries and commit.
func traceMessage(m *Message) string {
	if m.Raft == nil {
		return m.String()
	}
	return fmt.Sprintf("%s %s entries=%d commit=%d", m.String(), m.Raft.GetType(), len(m.Raft.GetEntries()), m.Raft.GetCommit())
}

// traceRecords is a compact list of records: transitions as node:FROM->TO,
// key-service records as name@epoch:owner/phase.
func traceRecords(recs []Record) string {
	var b strings.Builder
	for i, r := range recs {
		if i > 0 {
			b.WriteByte(' ')
		}
		switch r.Kind {
		case RecordTransition:
			fmt.Fprintf(&b, "%d:%s->%s", r.Transition.Node, r.Transition.From, r.Transition.To)
		case RecordKeyService:
			fmt.Fprintf(&b, "%s@%d:%d/%s", r.Key.Name, r.Key.Epoch, r.Key.Owner, r.Key.Phase)
		default:
			fmt.Fprintf(&b, "info:%d", r.Transition.Node)
		}
	}
	return b.String()
}
