package clusterapi

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/engine/stub"
)

// Generators for the wire types. Empty slices are drawn as nil: the wire
// does not tell them apart and decoders return nil.

func genStrings(name string) *rapid.Generator[[]string] {
	return rapid.Custom(func(t *rapid.T) []string {
		s := rapid.SliceOfN(rapid.String(), 0, 4).Draw(t, name)
		if len(s) == 0 {
			return nil
		}
		return s
	})
}

func genInfo() *rapid.Generator[WireNodeInfo] {
	return rapid.Custom(func(t *rapid.T) WireNodeInfo {
		return WireNodeInfo{
			CPUsTotal: rapid.Uint32().Draw(t, "total"), CPUsOnline: rapid.Uint32().Draw(t, "online"),
			MemoryBytes: rapid.Uint64().Draw(t, "mem"), KeyServices: genStrings("ks").Draw(t, "ks"),
			Capabilities: genStrings("caps").Draw(t, "caps"),
		}
	})
}

func genMember() *rapid.Generator[WireMember] {
	return rapid.Custom(func(t *rapid.T) WireMember {
		return WireMember{Node: rapid.Uint32().Draw(t, "node"), State: rapid.Uint8().Draw(t, "state"),
			Incarnation: rapid.Uint64().Draw(t, "inc"), Info: genInfo().Draw(t, "info"), LastChange: rapid.Uint64().Draw(t, "last")}
	})
}

func genTransition() *rapid.Generator[WireTransition] {
	return rapid.Custom(func(t *rapid.T) WireTransition {
		return WireTransition{ID: rapid.Uint64().Draw(t, "id"), UnixNano: rapid.Int64().Draw(t, "time"),
			Node: rapid.Uint32().Draw(t, "node"), Incarnation: rapid.Uint64().Draw(t, "inc"),
			From: rapid.Uint8().Draw(t, "from"), To: rapid.Uint8().Draw(t, "to"), Cause: rapid.Uint8().Draw(t, "cause")}
	})
}

// TestWireRoundTrip: the compound arguments and results decode to what was
// encoded, and every proper prefix of an encoding is refused.
func TestWireRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		members := rapid.SliceOfN(genMember(), 0, 4).Draw(t, "members")
		if len(members) == 0 {
			members = nil
		}
		last := rapid.Uint64().Draw(t, "last")
		b := apiMembershipAppendResults(nil, members, last)
		gotM, gotLast, err := apiMembershipResults(b)
		if err != nil || gotLast != last || !reflect.DeepEqual(gotM, members) {
			t.Fatalf("Membership results: %+v %d %v, want %+v %d", gotM, gotLast, err, members, last)
		}
		checkPrefixes(t, b, func(p []byte) error { _, _, err := apiMembershipResults(p); return err })

		ts := rapid.SliceOfN(genTransition(), 0, 4).Draw(t, "transitions")
		if len(ts) == 0 {
			ts = nil
		}
		b = apiWaitTransitionsAppendResults(nil, ts)
		gotT, err := apiWaitTransitionsResults(b)
		if err != nil || !reflect.DeepEqual(gotT, ts) {
			t.Fatalf("WaitTransitions results: %+v %v, want %+v", gotT, err, ts)
		}
		checkPrefixes(t, b, func(p []byte) error { _, err := apiWaitTransitionsResults(p); return err })

		node, info := rapid.Uint32().Draw(t, "node"), genInfo().Draw(t, "info")
		b = apiSetNodeInfoAppendArgs(nil, node, info)
		gotN, gotI, err := apiSetNodeInfoArgs(b)
		if err != nil || gotN != node || !reflect.DeepEqual(gotI, info) {
			t.Fatalf("SetNodeInfo args: %d %+v %v", gotN, gotI, err)
		}
		checkPrefixes(t, b, func(p []byte) error { _, _, err := apiSetNodeInfoArgs(p); return err })

		which, id := Which(rapid.Uint8().Draw(t, "which")), rapid.Uint64().Draw(t, "id")
		gotW, gotID, err := apiDetailedTransitionArgs(apiDetailedTransitionAppendArgs(nil, which, id))
		if err != nil || gotW != which || gotID != id {
			t.Fatalf("DetailedTransition args: %d %d %v", gotW, gotID, err)
		}
	})
}

func checkPrefixes(t *rapid.T, b []byte, decode func([]byte) error) {
	for i := 0; i < len(b); i++ {
		if decode(b[:i]) == nil {
			t.Fatalf("prefix of %d of %d bytes accepted", i, len(b))
		}
	}
}

// TestCLMSConversions: clms types survive the trip through the wire types,
// the time as the same instant and the zero time as zero.
func TestCLMSConversions(t *testing.T) {
	now := time.Now()
	tr := clms.Transition{ID: 7, Time: now, Node: 3, Incarnation: 9, From: clms.StateUp, To: clms.StateShutdown, Cause: clms.CauseShutdown}
	got := WireTransitionOf(tr).CLMS()
	if !got.Time.Equal(now) {
		t.Fatalf("time %v, want %v", got.Time, now)
	}
	got.Time, tr.Time = time.Time{}, time.Time{}
	if got != tr {
		t.Fatalf("transition %+v, want %+v", got, tr)
	}
	if w := WireTransitionOf(tr); w.UnixNano != 0 || !w.CLMS().Time.IsZero() {
		t.Fatalf("zero time: %+v", w)
	}
	m := clms.Member{Node: 2, State: clms.StateKCleanup, Incarnation: 4, LastChange: 11,
		Info: clms.NodeInfo{CPUsTotal: 4, CPUsOnline: 3, MemoryBytes: 1 << 30, KeyServices: []string{"a"}, Capabilities: []string{"b", "c"}}}
	if got := WireMemberOf(m).CLMS(); !reflect.DeepEqual(got, m) {
		t.Fatalf("member %+v, want %+v", got, m)
	}
}

// TestHostileArguments: a caller asking for absurd batches and waits gets
// the server's bounds, not what it asked for.
func TestHostileArguments(t *testing.T) {
	nodes, b, _ := serve(t, Config{MaxBatch: 3, MaxWait: 20 * time.Millisecond})
	h := newHistory()
	for i := 0; i < 5; i++ {
		if err := b.Append(h.next(1 + clms.NodeNum(i%2))); err != nil {
			t.Fatal(err)
		}
	}
	api := NewClient(nodes[0]).API()
	ctx := enginetest.Context(t, 20*time.Second)
	ts, err := api.WaitTransitions(ctx, 2, 0, 1<<32-1, 0)
	if err != nil || len(ts) != 3 {
		t.Fatalf("batch of 2^32-1: %d transitions, %v; want MaxBatch 3", len(ts), err)
	}
	// A wait of 49 days is cut to MaxWait: the call returns, empty.
	if ts, err = api.WaitTransitions(ctx, 2, 5, 10, 1<<32-1); err != nil || len(ts) != 0 {
		t.Fatalf("wait of 2^32-1 ms: %v %v", ts, err)
	}
	if _, err := NewClient(nodes[0]).WaitTransitions(ctx, 2, 0, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("client-side batch 0: %v", err)
	}
}

// FuzzAPIDecoders feeds arbitrary bytes to every decoder of the service:
// none may panic or allocate past the input, and whatever one accepts must
// re-encode to as many bytes.
func FuzzAPIDecoders(f *testing.F) {
	// Valid encodings of the compound arguments and results.
	info := WireNodeInfo{CPUsTotal: 8, CPUsOnline: 6, MemoryBytes: 1 << 34, KeyServices: []string{"demo"}, Capabilities: []string{"gpu", ""}}
	tr := WireTransition{ID: 42, UnixNano: 1700000000e9, Node: 3, Incarnation: 2, From: 2, To: 4, Cause: 3}
	f.Add(apiMembershipAppendResults(nil, []WireMember{{Node: 1, State: 2, Info: info, LastChange: 9}, {Node: 2}}, 9))
	f.Add(apiWaitTransitionsAppendResults(nil, []WireTransition{tr, tr}))
	f.Add(apiWaitTransitionsAppendArgs(nil, 41, 256, 20000))
	f.Add(apiSetNodeInfoAppendArgs(nil, 3, info))
	f.Add(apiNodeInfoAppendResults(nil, WireMember{Node: 3, Info: info}))
	f.Add(apiNextTransitionAppendResults(nil, tr, true))
	f.Add(apiDetailedTransitionAppendArgs(nil, WhichPrevious, 42))
	f.Add(apiClusterNameAppendResults(nil, "demo"))
	ks := []WireKeyService{{Name: "ks", Owner: 2, OwnerInc: 5, Epoch: 3, Phase: 2, Ready: true}, {Name: "", Epoch: 1}}
	f.Add(apiKeyServicesAppendResults(nil, ks, 7))
	f.Add(apiWaitKeyServicesAppendArgs(nil, 6, 20000))
	f.Add(apiWaitKeyServicesAppendResults(nil, ks[:1], 1<<40))
	// A declared error reply (ErrCompacted is status 3), an unknown status.
	f.Add(append([]byte{3}, stub.AppendString(nil, "transition no longer kept")...))
	f.Add([]byte{200, 0})
	// Lengths over what is left: a billion members, a 4 GiB string.
	f.Add([]byte{0, 0x80, 0x94, 0xeb, 0xdc, 0x03})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 'a'})
	// A bool of 2 (NextTransition's "found"), nothing at all.
	f.Add(append(apiNextTransitionAppendResults(nil, tr, true)[:len(apiNextTransitionAppendResults(nil, tr, true))-1], 2))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := apiCheckDecoders(b); err != nil {
			t.Fatal(err)
		}
	})
}
