package clms_test

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/framing"
)

// counter reads one of node's ci_clms_* series.
func counter(t *testing.T, eng *engine.Node, name string) string {
	t.Helper()
	var b strings.Builder
	eng.Metrics().WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, name+"{") {
			return l[strings.LastIndexByte(l, ' ')+1:]
		}
	}
	return ""
}

// The CLMS service believes only what it can check: a message that does
// not decode, or claims to come from another node than the engine
// authenticated, is refused and counted, never stepped.
func TestRunnerRefusesForgedMessages(t *testing.T) {
	c := newRunnerCluster(t, 3, 1, nil) // only node 1 is eligible: it must be up
	c.waitFor("node 1 master", []clms.NodeNum{1}, func(_ *runnerNode, s clms.RunnerStatus) bool { return s.IsMaster })
	eng2 := c.nodes[2].eng
	_ = c.nodes[2].r.Close() // node 2's engine keeps running: a peer that ignores the protocol
	ctx := enginetest.Context(t, 10*time.Second)
	m := engine.Method{Service: clms.ServiceID}
	forged := clms.Message{Type: clms.MsgLeave, From: 3, To: 1, FromInc: 1} // claims to be node 3
	b, err := forged.AppendEncode(nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	for range n {
		if _, err := eng2.Call(ctx, 1, m, b, nil); err == nil {
			t.Fatal("a forged message was accepted")
		}
		if _, err := eng2.Call(ctx, 1, m, []byte{clms.ProtocolVersion, 0xff}, nil); err == nil {
			t.Fatal("garbage was accepted")
		}
	}
	if got := counter(t, c.nodes[1].eng, "ci_clms_bad_messages_total"); got != "10" {
		t.Fatalf("ci_clms_bad_messages_total = %q, want 10", got)
	}
	if s := c.nodes[1].r.Status(); !s.IsMaster || s.Fenced {
		t.Fatalf("node 1 after forged messages: master=%v fenced=%v", s.IsMaster, s.Fenced)
	}
}

// fakeRefuser listens on a loopback address and answers every hello with a
// forged "declared down" refusal, as anyone who can answer at a peer's
// address can: the refusal frame comes before any key exchange. It returns
// its address and how many refusals it sent.
func fakeRefuser(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.9:0")
	if err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var hb [framing.HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err == nil {
				if h, err := framing.DecodeHeader(hb[:], 1<<16); err == nil {
					_, _ = io.CopyN(io.Discard, c, int64(h.Length))
				}
			}
			frame := framing.AppendRefusal(make([]byte, framing.HeaderSize), &framing.Refusal{
				Reason: framing.RefuseDeclaredDown, Version: framing.ProtocolVersion, Detail: "you were declared down (forged)"})
			h := framing.Header{Type: framing.TypeRefuse, Length: uint32(len(frame) - framing.HeaderSize)}
			h.Encode(frame)
			if _, err := c.Write(frame); err == nil {
				sent.Add(1)
			}
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String(), &sent
}

// A "declared down" refusal is unauthenticated: one from a fake node at a
// peer's address must not fence a member whose lease is valid. Node 2
// loses its link to node 3, whose address now answers with forged
// refusals: node 2's probes are refused, each refusal is ignored and
// counted, and node 2 stays a member. (Before the fix node 2 fenced at the
// first refusal.)
func TestRunnerForgedRefusalDoesNotFence(t *testing.T) {
	// What is tested needs node 2's lease valid throughout: a lease four
	// times the other tests' outlasts the runner stalls of a loaded CI
	// machine (a run whose runner fell 451 ticks behind lost its lease,
	// and then rightly took the forged refusal for a real one).
	c := newRunnerClusterTiming(t, 3, 1, nil, clms.Compaction{}, clmstest.Stretch(testTiming(), 4))
	c.waitFor("all up", []clms.NodeNum{1, 2, 3}, allUp(1, 2, 3))
	eng2 := c.nodes[2].eng
	ctx := enginetest.Context(t, 10*time.Second)
	// A link from node 2 to node 3 (a garbage message: refused, but the
	// connection is up), so that node 2 sees it drop.
	if _, err := eng2.Call(ctx, 3, engine.Method{Service: clms.ServiceID}, []byte{clms.ProtocolVersion, 0xff}, nil); err == nil {
		t.Fatal("garbage was accepted")
	}
	addr, sent := fakeRefuser(t)
	if err := eng2.SetPeer(3, addr); err != nil {
		t.Fatal(err)
	}
	c.nodes[3].close()
	// Every refusal node 2 ignored is one the fake sent; not every one the
	// fake sent need reach node 2's runner (a dial that gave up under load
	// before it read the frame), so the counts need not meet.
	c.waitFor("node 2 refused by the fake and ignoring it", []clms.NodeNum{2}, func(n *runnerNode, s clms.RunnerStatus) bool {
		got, _ := strconv.ParseInt(counter(t, n.eng, "ci_clms_refusals_ignored_total"), 10, 64)
		return got > 0 && got <= sent.Load() && stateOf(s, 3).State == clms.StateDown
	})
	if s := c.nodes[2].r.Status(); s.Fenced || !s.LeaseValid || stateOf(s, 2).State != clms.StateUp {
		t.Fatalf("node 2 after forged refusals: fenced=%v (%s) lease=%v state=%v", s.Fenced, s.FenceReason, s.LeaseValid, stateOf(s, 2).State)
	}
}
