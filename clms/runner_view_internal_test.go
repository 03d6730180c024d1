package clms

import (
	"context"
	"errors"
	"testing"
)

// TestViewChanged: the counters (Stats) do not change the view; the
// master, the last transition and a key service's phase do.
func TestViewChanged(t *testing.T) {
	base := RunnerStatus{Master: 1, Last: 5, Stats: Stats{KeyServices: []KeyServiceStats{{KeyRecord: KeyRecord{Name: "k", Owner: 1, Epoch: 1, Phase: KeyReady}}}}}
	ticked := base
	ticked.Stats.HeartbeatsSent = 99
	ticked.Stats.KeyServices = []KeyServiceStats{{KeyRecord: KeyRecord{Name: "k", Owner: 1, Epoch: 1, Phase: KeyReady}, PullTicks: 3}}
	if viewChanged(&base, &ticked) {
		t.Error("counters changed the view")
	}
	for name, f := range map[string]func(*RunnerStatus){
		"master": func(s *RunnerStatus) { s.Master = 2 },
		"last":   func(s *RunnerStatus) { s.Last = 6 },
		"phase": func(s *RunnerStatus) {
			s.Stats.KeyServices = []KeyServiceStats{{KeyRecord: KeyRecord{Name: "k", Owner: 2, Epoch: 2, Phase: KeyFailover}}}
		},
		"lease": func(s *RunnerStatus) { s.LeaseValid = true },
	} {
		s := base
		f(&s)
		if !viewChanged(&base, &s) {
			t.Errorf("%s did not change the view", name)
		}
	}
}

// TestWaitView: WaitView returns at once for an older sequence, wakes on a
// published change (the status it then reads is the new one), and ends
// with its context or the runner.
func TestWaitView(t *testing.T) {
	r := &Runner{viewCh: make(chan struct{}), done: make(chan struct{})}
	r.status.Store(&RunnerStatus{View: 1})
	if err := r.WaitView(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	woke := make(chan uint64)
	go func() {
		if err := r.WaitView(context.Background(), 1); err != nil {
			t.Error(err)
		}
		woke <- r.ViewSeq()
	}()
	r.status.Store(&RunnerStatus{View: 2}) // as publishStatus does
	r.viewChangedNow()
	if v := <-woke; v != 2 {
		t.Fatalf("woke with view %d, want 2", v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.WaitView(ctx, 2); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	close(r.done)
	if err := r.WaitView(context.Background(), 2); !errors.Is(err, ErrStopped) {
		t.Fatalf("stopped: %v", err)
	}
}
