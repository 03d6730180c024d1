package clms

import (
	"errors"
	"reflect"
	"testing"
)

func sampleKeyCommand() command {
	return command{Kind: RecordKeyService, Key: KeyRecord{Name: "ks", Owner: 3, OwnerInc: 9, Epoch: 2, Phase: KeyFailover, From: 1},
		KeyFrom: keyCAS{Epoch: 1, Owner: 1, Phase: KeyReady}}
}

func TestKeyCommandRoundTrip(t *testing.T) {
	c := sampleKeyCommand()
	got, err := decodeCommand(c.encode())
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("got %+v, %v; want %+v", got, err, c)
	}
	b := c.encode()
	for i := range len(b) {
		if _, err := decodeCommand(b[:i]); !errors.Is(err, ErrDecode) {
			t.Fatalf("cut at %d/%d: err %v", i, len(b), err)
		}
	}
}

// The receiver bounds pulled data before allocating.
func TestKeyDataBounded(t *testing.T) {
	m := Message{Type: MsgKeyData, From: 2, To: 1, KeyService: "ks", Epoch: 1, Data: make([]byte, maxKeyData+1)}
	b, err := m.AppendEncode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeMessage(b); !errors.Is(err, ErrDecode) {
		t.Fatalf("oversized data: err %v, want ErrDecode", err)
	}
}

// decideKey enforces the safety rules whatever a master proposes.
func TestDecideKeyRules(t *testing.T) {
	s := newState([]NodeNum{1, 2, 3}, 0)
	for n, st := range map[NodeNum]NodeState{1: StateUp, 2: StateUp, 3: StateGoingDown} {
		s.members[n].State, s.members[n].Incarnation = st, 1
	}
	s.keys["ks"] = &KeyRecord{Name: "ks", Owner: 1, OwnerInc: 1, Epoch: 4, Phase: KeyReady}
	from := keyCAS{Epoch: 4, Owner: 1, Phase: KeyReady}
	for _, tc := range []struct {
		name string
		key  KeyRecord
		from keyCAS
		ok   bool
	}{
		{"new owner while the old one is a member", KeyRecord{Name: "ks", Owner: 2, OwnerInc: 1, Epoch: 5, Phase: KeyFailover, From: 1}, from, false},
		{"hand-over without a hand-over phase", KeyRecord{Name: "ks", Owner: 2, OwnerInc: 1, Epoch: 5, Phase: KeyFailover, Handover: true, From: 1}, from, false},
		{"new owner that is not a member", KeyRecord{Name: "ks", Owner: 3, OwnerInc: 1, Epoch: 5, Phase: KeyFailover, From: 1}, from, false},
		{"stale compare-and-set", KeyRecord{Name: "ks", Owner: 1, OwnerInc: 1, Epoch: 4, Phase: KeyHandover, Target: 2}, keyCAS{Epoch: 3, Owner: 1, Phase: KeyReady}, false},
		{"unowned while the owner is a member", KeyRecord{Name: "ks", Epoch: 4, Phase: KeyUnowned, From: 1}, from, false},
		{"hand-over to itself", KeyRecord{Name: "ks", Owner: 1, OwnerInc: 1, Epoch: 4, Phase: KeyHandover, Target: 1}, from, false},
		{"hand-over", KeyRecord{Name: "ks", Owner: 1, OwnerInc: 1, Epoch: 4, Phase: KeyHandover, Target: 2}, from, true},
	} {
		_, ok := s.decideKey(command{Kind: RecordKeyService, Key: tc.key, KeyFrom: tc.from})
		if ok != tc.ok {
			t.Errorf("%s: applies=%v, want %v", tc.name, ok, tc.ok)
		}
	}
	// Once the owner left membership, the next epoch (only) may go to a member.
	s.members[1].State = StateGoingDown
	if _, ok := s.decideKey(command{Kind: RecordKeyService, Key: KeyRecord{Name: "ks", Owner: 2, OwnerInc: 1, Epoch: 6, Phase: KeyFailover, From: 1}, KeyFrom: from}); ok {
		t.Error("epoch skipped")
	}
	if _, ok := s.decideKey(command{Kind: RecordKeyService, Key: KeyRecord{Name: "ks", Owner: 2, OwnerInc: 1, Epoch: 5, Phase: KeyFailover, From: 1}, KeyFrom: from}); !ok {
		t.Error("failover to a member refused")
	}
}
