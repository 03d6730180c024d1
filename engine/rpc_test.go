package engine

import (
	"bytes"
	"testing"
	"time"
)

func TestCallEcho(t *testing.T) {
	for _, inline := range []bool{true, false} {
		t.Run(map[bool]string{true: "inline", false: "handles"}[inline], func(t *testing.T) {
			nodes := startCluster(t, 2, nil)
			if err := nodes[1].Register(Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}, MaxHandles: 4, Inline: inline}); err != nil {
				t.Fatal(err)
			}
			m := Method{Service: echoSvc}
			for i := 0; i < 100; i++ {
				args := []byte{byte(i), 1, 2, 3}
				got, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, m, args, nil)
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if !bytes.Equal(got, args) {
					t.Fatalf("call %d: got %v want %v", i, got, args)
				}
			}
		})
	}
}
