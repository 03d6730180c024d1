package node_test

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/keyseq"
	"github.com/clusterinfra/ci/services/node"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

// keyseqOpts is a 3-node cluster where every node may run keyseq.
func keyseqOpts(profile string) nodetest.Options {
	return nodetest.Options{Nodes: 3, Profile: profile, KeyServices: []clms.KeyServiceEntry{{Name: keyseq.Name}}}
}

// ask sends the child one command line and returns its answer.
func (p *proc) ask(line string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("node %d: %v", p.num, err)
	}
	select {
	case l, ok := <-p.lines:
		if !ok || p.fenceLine(l) {
			p.t.Fatalf("node %d ended (%q)", p.num, p.fenceWhy)
		}
		return l
	case <-time.After(20 * time.Second):
		p.t.Fatalf("node %d does not answer %q", p.num, line)
	}
	return ""
}

// next takes count ids from keyseq on p.
func (p *proc) next(line string) (keyseq.Range, string) {
	p.t.Helper()
	l := p.ask(line)
	js, ok := strings.CutPrefix(l, "next ")
	if !ok {
		return keyseq.Range{}, l
	}
	var rg keyseq.Range
	if err := json.Unmarshal([]byte(js), &rg); err != nil {
		p.t.Fatal(err)
	}
	return rg, ""
}

// keyOf is keyseq's state in a node's status.
func keyOf(s node.Status) node.KeyServiceStatus {
	for _, k := range s.KeyServices {
		if k.Name == keyseq.Name {
			return k
		}
	}
	return node.KeyServiceStatus{}
}

// readyAfter: keyseq has a ready owner in an epoch above after, and the
// node is ready.
func readyAfter(after uint64) func(childReport) bool {
	return func(r childReport) bool {
		k := keyOf(r.Status)
		return k.Phase == "ready" && k.Owner != 0 && k.Epoch > after && r.Status.Ready
	}
}

// keyAt is when r applied the first keyseq record matching f, or 0.
func keyAt(r childReport, f func(clms.KeyRecord) bool) int64 {
	for _, k := range r.Keys {
		if k.K.Name == keyseq.Name && f(k.K) {
			return k.At
		}
	}
	return 0
}

// kill -9 of keyseq's owner in a 3-node cluster: a survivor becomes owner
// in the next epoch, pulls both survivors' highest ids and continues after
// the largest, which is at least every id handed out before; the third
// node gets the next id from it. The old owner, restarted as a new
// incarnation, never serves, and its request in the old epoch is refused.
func TestProcKeyServiceKill(t *testing.T) {
	pc := newProcCluster(t, keyseqOpts(""))
	pc.startAll()
	all := pc.all()
	reps := pc.waitFor("keyseq ready everywhere", all, readyAfter(0))
	owner, epoch := keyOf(reps[all[0]].Status).Owner, keyOf(reps[all[0]].Status).Epoch
	var handed uint64
	seen := map[uint64]bool{}
	for range 3 {
		for _, n := range all {
			rg, errl := pc.procs[n].next("next 4")
			if errl != "" {
				t.Fatalf("node %d: %s", n, errl)
			}
			for id := rg.First; id <= rg.Last(); id++ {
				if seen[id] {
					t.Fatalf("id %d handed out twice", id)
				}
				seen[id] = true
			}
			handed = max(handed, rg.Last())
		}
	}
	survivors := others(all, owner)
	want := map[clms.NodeNum]uint64{}
	for _, n := range survivors {
		r, _ := pc.procs[n].report()
		want[n] = r.Keyseq.Seen
	}
	if err := pc.procs[owner].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-pc.procs[owner].exit
	reps = pc.waitFor("keyseq ready on a survivor", survivors, readyAfter(epoch))
	k := keyOf(reps[survivors[0]].Status)
	if k.Epoch != epoch+1 || !slices.Contains(survivors, k.Owner) {
		t.Fatalf("after the kill: %+v; want a survivor in epoch %d", k, epoch+1)
	}
	newOwner := k.Owner
	a := reps[newOwner].Keyseq.Assembled
	if a == nil || a.Epoch != epoch+1 || a.Handover || !maps.Equal(a.Pulled, want) || a.Base != max(want[survivors[0]], want[survivors[1]]) || a.Base < handed {
		t.Fatalf("the new owner assembled %+v; want pulled %v (ids handed out up to %d)", a, want, handed)
	}
	third := others(survivors, newOwner)[0]
	rg, errl := pc.procs[third].next("next 1")
	if errl != "" || rg.First != a.Base+1 || rg.Epoch != epoch+1 {
		t.Fatalf("node %d's first id after the failover: %+v %s; want %d in epoch %d", third, rg, errl, a.Base+1, epoch+1)
	}

	// The old owner comes back as a new incarnation.
	pc.start(owner)
	pc.waitFor("the old owner back UP", all, repUp(all...))
	r, _ := pc.procs[owner].report()
	if ks := r.Keyseq; ks.Serving || ks.Epoch != 0 || keyOf(r.Status).Acting || keyOf(r.Status).Owner != newOwner {
		t.Fatalf("the restarted old owner: keyseq %+v, key service %+v", ks, keyOf(r.Status))
	}
	if _, errl := pc.procs[owner].next(fmt.Sprintf("nextat %d %d 1", newOwner, epoch)); !strings.Contains(errl, keyseq.ErrStaleEpoch.Error()) {
		t.Fatalf("a request in the old epoch: %q, want %v", errl, keyseq.ErrStaleEpoch)
	}
	if r, _ := pc.procs[newOwner].report(); r.Keyseq.Refused != 1 {
		t.Fatalf("the new owner refused %d stale requests, want 1", r.Keyseq.Refused)
	}
}
