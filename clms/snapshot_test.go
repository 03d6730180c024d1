package clms

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"
)

// sampleState is a State after a join, a restart and a key service: every
// part of an image is set.
func sampleState(t testing.TB, keep int) *State {
	s := newState([]NodeNum{1, 2, 5}, keep)
	info := NodeInfo{CPUsTotal: 8, CPUsOnline: 8, MemoryBytes: 1 << 30, KeyServices: []string{"ks"}, Capabilities: []string{"gpu"}}
	at := time.Unix(1_800_000_000, 0).UTC()
	steps := []Transition{
		{Node: 1, Incarnation: 7, From: StateNeverUp, To: StateComingUp, Cause: CauseJoin, Time: at},
		{Node: 1, Incarnation: 7, From: StateComingUp, To: StateUp, Cause: CauseNodeUpDone},
		{Node: 2, Incarnation: 3, From: StateNeverUp, To: StateComingUp, Cause: CauseJoin},
		{Node: 2, Incarnation: 3, From: StateComingUp, To: StateGoingDown, Cause: CauseRestart},
		{Node: 2, Incarnation: 3, From: StateGoingDown, To: StateKCleanup, Cause: CauseCleanupDone},
	}
	for _, tr := range steps {
		r, ok := s.decide(command{Kind: RecordTransition, T: tr, Info: info})
		if !ok {
			t.Fatalf("%v does not apply", tr)
		}
		if err := s.apply(r); err != nil {
			t.Fatal(err)
		}
	}
	r, ok := s.decide(command{Kind: RecordNodeInfo, T: Transition{Node: 1}, Info: NodeInfo{CPUsTotal: 2}, InfoBase: s.LastSeq()})
	if !ok {
		t.Fatal("setinfo does not apply")
	}
	if err := s.apply(r); err != nil {
		t.Fatal(err)
	}
	k, ok := s.decide(command{Kind: RecordKeyService, Key: KeyRecord{Name: "ks", Owner: 1, OwnerInc: 7, Epoch: 1, Phase: KeyFailover}})
	if !ok {
		t.Fatal("key record does not apply")
	}
	if err := s.apply(k); err != nil {
		t.Fatal(err)
	}
	return s
}

// An image gives back the State it was taken of: members, their last
// transitions, key services and the kept history (cut to the receiver's
// keep); records before it are gone, and the next record applies.
func TestImageRoundTrip(t *testing.T) {
	s := sampleState(t, 0)
	for _, keep := range []int{0, 2} {
		got, err := decodeImage(s.encodeImage(), keep)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Members(), s.Members()) || !reflect.DeepEqual(got.KeyServices(), s.KeyServices()) ||
			!reflect.DeepEqual(got.last, s.last) {
			t.Fatalf("keep %d: image gives %+v, want %+v", keep, got.Members(), s.Members())
		}
		if got.LastSeq() != s.LastSeq() || got.LastTransition() != s.LastTransition() || got.Records(0) != nil {
			t.Fatalf("keep %d: seq %d transition %d, want %d %d", keep, got.LastSeq(), got.LastTransition(), s.LastSeq(), s.LastTransition())
		}
		want := s.History(0)
		if keep > 0 {
			want = want[len(want)-keep:]
		}
		if h := got.History(0); !reflect.DeepEqual(h, want) {
			t.Fatalf("keep %d: history %v, want %v", keep, h, want)
		}
		if tr, ok := got.Transition(got.members[2].LastChange); !ok || tr.To != StateKCleanup {
			t.Fatalf("keep %d: node 2's last transition %v %v", keep, tr, ok)
		}
		next := Transition{Node: 2, Incarnation: 3, From: StateKCleanup, To: StateUCleanup, Cause: CauseCleanupDone}
		r, ok := got.decide(command{Kind: RecordTransition, T: next})
		if !ok || got.apply(r) != nil || got.LastSeq() != s.LastSeq()+1 {
			t.Fatalf("keep %d: the next record does not apply after the image", keep)
		}
	}
}

// The State's windows stay within keep and a quarter, and History and
// Records start at the oldest kept.
func TestStateWindows(t *testing.T) {
	s := newState([]NodeNum{1}, 16)
	inc := uint64(0)
	for range 50 {
		inc++
		for _, tr := range []Transition{
			{Node: 1, Incarnation: inc, From: StateNeverUp, To: StateComingUp},
			{Node: 1, Incarnation: inc, From: StateComingUp, To: StateGoingDown},
			{Node: 1, Incarnation: inc, From: StateGoingDown, To: StateKCleanup},
			{Node: 1, Incarnation: inc, From: StateKCleanup, To: StateUCleanup},
			{Node: 1, Incarnation: inc, From: StateUCleanup, To: StateDown},
		} {
			if m := s.members[1]; m.State == StateDown && tr.From == StateNeverUp {
				tr.From = StateDown
			}
			r, ok := s.decide(command{Kind: RecordTransition, T: tr})
			if !ok {
				t.Fatalf("%v does not apply", tr)
			}
			if err := s.apply(r); err != nil {
				t.Fatal(err)
			}
			if len(s.records) > 20 || len(s.history) > 20 {
				t.Fatalf("%d records and %d transitions kept, keep 16", len(s.records), len(s.history))
			}
		}
	}
	if s.LastTransition() != 250 || s.History(0)[0].ID != s.FirstTransition() || s.Records(0) != nil ||
		s.Records(s.FirstSeq() - 1)[0].Seq != s.FirstSeq() {
		t.Fatalf("last %d first %d", s.LastTransition(), s.FirstTransition())
	}
}

// A decoder of network bytes (raft snapshots, MsgRecords.Data) refuses
// what an honest peer never sends.
func TestImageRefused(t *testing.T) {
	good := sampleState(t, 0).encodeImage()
	for name, b := range map[string][]byte{
		"empty":          nil,
		"version":        append([]byte{9}, good[1:]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(append([]byte(nil), good...), 0),
		"huge node list": {imageVersion, 0, 0xff, 0xff, 0xff, 0x7f},
		"huge history":   {imageVersion, 0, 0, 0, 0, 0xff, 0xff, 0x3f},
	} {
		if _, err := decodeImage(b, 0); !errors.Is(err, ErrDecode) {
			t.Errorf("%s: %v, want ErrDecode", name, err)
		}
	}
}

// FuzzDecodeImage: seeds are an image of every part (sampleState) and an
// empty cluster's; whatever decodes re-encodes to an image that decodes to
// the same State.
func FuzzDecodeImage(f *testing.F) {
	f.Add(sampleState(f, 0).encodeImage())
	f.Add(newState([]NodeNum{1, 2}, 0).encodeImage())
	f.Add([]byte{imageVersion, 0, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeImage(b, 0)
		if err != nil {
			return
		}
		again, err := decodeImage(s.encodeImage(), 0)
		if err != nil {
			t.Fatalf("re-encoded image does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalizeState(s), normalizeState(again)) {
			t.Fatal("re-encoded image decodes to another State")
		}
	})
}

func normalizeState(s *State) []any {
	return []any{s.Members(), s.KeyServices(), s.last, s.LastSeq(), s.History(0), s.FirstTransition()}
}

// TestRestoreReacts: a node without a log that receives a state image in
// which its incarnation is already UP (its COMINGUP among the skipped
// records) joins; one in which it is down fences; a peer's incarnation that
// the image replaced is refused and the new one reached.
func TestRestoreReacts(t *testing.T) {
	nodes := []NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2}, {Num: 3}}
	image := func(steps ...Transition) []byte {
		s := newState([]NodeNum{1, 2, 3}, 0)
		for _, tr := range steps {
			r, ok := s.decide(command{Kind: RecordTransition, T: tr})
			if !ok {
				t.Fatalf("%v does not apply", tr)
			}
			if err := s.apply(r); err != nil {
				t.Fatal(err)
			}
		}
		return s.encodeImage()
	}
	up := func(n NodeNum, inc uint64, from NodeState) []Transition {
		return []Transition{{Node: n, Incarnation: inc, From: from, To: StateComingUp}, {Node: n, Incarnation: inc, From: StateComingUp, To: StateUp}}
	}
	down := func(n NodeNum, inc uint64) []Transition {
		return []Transition{{Node: n, Incarnation: inc, From: StateUp, To: StateGoingDown}, {Node: n, Incarnation: inc, From: StateGoingDown, To: StateKCleanup},
			{Node: n, Incarnation: inc, From: StateKCleanup, To: StateUCleanup}, {Node: n, Incarnation: inc, From: StateUCleanup, To: StateDown}}
	}
	kinds := func(c *Core) map[ActionKind][]NodeNum {
		got := map[ActionKind][]NodeNum{}
		for _, a := range c.actions {
			got[a.Kind] = append(got[a.Kind], a.Node)
		}
		c.actions = nil
		return got
	}
	c, err := NewCore(Config{Self: 3, Nodes: nodes, Timing: LANFastTiming(), Incarnation: 5})
	if err != nil {
		t.Fatal(err)
	}
	base := append(append(up(1, 1, StateNeverUp), up(2, 1, StateNeverUp)...), up(3, 5, StateNeverUp)...)
	if !c.restore(image(base...), "test") || c.phase != phaseMember || c.restored == nil {
		t.Fatalf("not joined from an image where it is UP: phase %d", c.phase)
	}
	if got := kinds(c); len(got[ActJoined]) != 1 || got[ActJoined][0] != 3 {
		t.Fatalf("actions %v, want joined", got)
	}
	// Node 2 restarted (incarnation 2) in records this node skips.
	next := append(append(slices.Clone(base), down(2, 1)...), up(2, 2, StateDown)...)
	if !c.restore(image(next...), "test") {
		t.Fatal("a newer image was not taken")
	}
	if got := kinds(c); !slices.Equal(got[ActPeerDown], []NodeNum{2}) || !slices.Equal(got[ActRunNodeUp], []NodeNum{2}) {
		t.Fatalf("actions %v, want node 2's old incarnation down and the new one up", got)
	}
	if c.restore(image(base...), "test") {
		t.Fatal("an older image replaced the State")
	}
	// This incarnation declared down in skipped records: it fences.
	if !c.restore(image(append(slices.Clone(next), down(3, 5)...)...), "test") || c.phase != phaseFenced {
		t.Fatalf("not fenced by an image where it is DOWN: phase %d", c.phase)
	}
}
