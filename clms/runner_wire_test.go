package clms_test

import (
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
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
