package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime/trace"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestParseFindsSlowCall writes a real execution trace holding one
// "slowcall" log, as bench's TestTraceSlowCalls does, and checks that
// parse finds it with its peer, duration and preemption count.
func TestParseFindsSlowCall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p-client-00.trace")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // the window the "call" claims
	trace.Log(context.Background(), "slowcall", "0-ics 1000000 3")
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	p, err := parse(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.slows) != 1 {
		t.Fatalf("found %d slow calls, want 1", len(p.slows))
	}
	s := p.slows[0]
	if s.peer != "0-ics" || s.end-s.start != 1000000 || s.ivcsw != 3 {
		t.Fatalf("slow call %+v, want peer 0-ics, 1ms, 3 preemptions", s)
	}
	if s.start < p.first {
		t.Fatalf("the call starts before the trace (%d < %d)", s.start, p.first)
	}
}
