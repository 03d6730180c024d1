package clms_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
)

func TestSubsystemsOrderAndLimit(t *testing.T) {
	var s clms.Subsystems
	var ran []string
	cb := func(name string) clms.Callback {
		return func(_ context.Context, node clms.NodeNum, inc uint64) error {
			ran = append(ran, fmt.Sprintf("%s(%d/%d)", name, node, inc))
			return nil
		}
	}
	// Registered out of band order: they run by band, then registration.
	for _, r := range []struct {
		name string
		band uint8
	}{{"b2-first", 2}, {"b1-first", 1}, {"b2-second", 2}, {"b0", 0}, {"b1-second", 1}} {
		if err := s.Register(r.name, r.band, cb(r.name), cb(r.name+"-down")); err != nil {
			t.Fatal(err)
		}
	}
	res := s.Run(context.Background(), true, 7, 3, time.Second)
	want := []string{"b0(7/3)", "b1-first(7/3)", "b1-second(7/3)", "b2-first(7/3)", "b2-second(7/3)"}
	if !slices.Equal(ran, want) || len(res) != 5 || clms.Failed(res) != nil {
		t.Fatalf("ran %v (results %v), want %v", ran, res, want)
	}
	if err := s.Register("b0", 3, nil, nil); !errors.Is(err, clms.ErrSubsystemExists) {
		t.Fatalf("duplicate: %v", err)
	}
	for i := 5; i < clms.MaxSubsystems; i++ {
		if err := s.Register(fmt.Sprint("s", i), 9, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Register("one too many", 0, nil, nil); !errors.Is(err, clms.ErrTooManySubsystems) {
		t.Fatalf("16th subsystem: %v", err)
	}
}

// A failing, a panicking and a hung callback are each reported, and the
// callbacks after them still run.
func TestSubsystemsFailuresDoNotStopOthers(t *testing.T) {
	var s clms.Subsystems
	release := make(chan struct{})
	hungDone := make(chan struct{})
	boom := errors.New("boom")
	ranLast := false
	_ = s.Register("fails", 0, nil, func(context.Context, clms.NodeNum, uint64) error { return boom })
	_ = s.Register("panics", 0, nil, func(context.Context, clms.NodeNum, uint64) error { panic("oops") })
	_ = s.Register("hangs", 1, nil, func(context.Context, clms.NodeNum, uint64) error {
		defer close(hungDone)
		<-release // ignores its context, as a buggy subsystem would
		return nil
	})
	_ = s.Register("last", 2, nil, func(context.Context, clms.NodeNum, uint64) error { ranLast = true; return nil })
	res := s.Run(context.Background(), false, 2, 1, 20*time.Millisecond)
	close(release)
	<-hungDone
	if !ranLast {
		t.Fatal("the callback after the failures did not run")
	}
	if got := clms.Failed(res); !slices.Equal(got, []string{"fails", "panics", "hangs"}) {
		t.Fatalf("failed %v", got)
	}
	for i, want := range []error{boom, clms.ErrCallbackPanic, clms.ErrCallbackTimeout, nil} {
		if !errors.Is(res[i].Err, want) && !(want == nil && res[i].Err == nil) {
			t.Errorf("%s: err %v, want %v", res[i].Name, res[i].Err, want)
		}
	}
}
