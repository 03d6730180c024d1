package examplesvc

import (
	"errors"
	"reflect"
	"testing"

	"pgregory.net/rapid"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/stub"
)

// Generators for the service's types. Empty slices and maps are drawn as
// nil: the wire does not tell them apart and decoders return nil.

func genBytes() *rapid.Generator[[]byte] {
	return rapid.Custom(func(t *rapid.T) []byte {
		b := rapid.SliceOfN(rapid.Byte(), 0, 40).Draw(t, "bytes")
		if len(b) == 0 {
			return nil
		}
		return b
	})
}

func genLabels() *rapid.Generator[map[string]string] {
	return rapid.Custom(func(t *rapid.T) map[string]string {
		m := rapid.MapOfN(rapid.String(), rapid.String(), 0, 5).Draw(t, "labels")
		if len(m) == 0 {
			return nil
		}
		return m
	})
}

func genEntry() *rapid.Generator[Entry] {
	return rapid.Custom(func(t *rapid.T) Entry {
		return Entry{
			Key:     rapid.String().Draw(t, "key"),
			Value:   genBytes().Draw(t, "value"),
			Version: rapid.Uint64().Draw(t, "version"),
			Meta: Meta{
				Writer:  rapid.Uint32().Draw(t, "writer"),
				Labels:  genLabels().Draw(t, "labels"),
				Touches: rapid.Uint32().Draw(t, "touches"),
			},
		}
	})
}

func genEntries() *rapid.Generator[[]Entry] {
	return rapid.Custom(func(t *rapid.T) []Entry {
		s := rapid.SliceOfN(genEntry(), 0, 4).Draw(t, "entries")
		if len(s) == 0 {
			return nil
		}
		return s
	})
}

func genStats() *rapid.Generator[Stats] {
	return rapid.Custom(func(t *rapid.T) Stats {
		c := rapid.MapOfN(rapid.String(), rapid.Int64(), 0, 5).Draw(t, "counters")
		if len(c) == 0 {
			c = nil
		}
		return Stats{Keys: rapid.Int().Draw(t, "keys"), Counters: c, Touches: rapid.Uint64().Draw(t, "touches")}
	})
}

// checkPrefixes asserts that every proper prefix of a valid encoding is
// refused, and without panicking: input split at any byte is truncated.
func checkPrefixes(t *rapid.T, b []byte, decode func([]byte) error) {
	for i := range b {
		if err := decode(b[:i]); err == nil {
			t.Fatalf("a %d-byte prefix of % x decoded", i, b)
		}
	}
}

// TestRoundTrip: for every procedure, what the client stub encodes the
// server stub decodes to equal values, and the other way for results.
func TestRoundTrip(t *testing.T) {
	t.Run("Get", rapid.MakeCheck(func(t *rapid.T) {
		key, e := rapid.String().Draw(t, "key"), genEntry().Draw(t, "entry")
		args := kvGetAppendArgs(nil, key)
		if k, err := kvGetArgs(args); err != nil || k != key {
			t.Fatalf("args: %q, %v", k, err)
		}
		res := kvGetAppendResults(nil, e)
		if got, err := kvGetResults(res); err != nil || !reflect.DeepEqual(got, e) {
			t.Fatalf("results: %+v, %v; want %+v", got, err, e)
		}
		checkPrefixes(t, args, func(b []byte) error { _, err := kvGetArgs(b); return err })
		checkPrefixes(t, res, func(b []byte) error { _, err := kvGetResults(b); return err })
	}))
	t.Run("Put", rapid.MakeCheck(func(t *rapid.T) {
		key, val, labels, ver := rapid.String().Draw(t, "key"), genBytes().Draw(t, "value"), genLabels().Draw(t, "labels"), rapid.Uint64().Draw(t, "ifVersion")
		args := kvPutAppendArgs(nil, key, val, labels, ver)
		k, v, l, iv, err := kvPutArgs(args)
		if err != nil || k != key || !reflect.DeepEqual(v, val) || !reflect.DeepEqual(l, labels) || iv != ver {
			t.Fatalf("args: %q %v %v %d, %v", k, v, l, iv, err)
		}
		checkPrefixes(t, args, func(b []byte) error { _, _, _, _, err := kvPutArgs(b); return err })
		r := rapid.Uint64().Draw(t, "version")
		if got, err := kvPutResults(kvPutAppendResults(nil, r)); err != nil || got != r {
			t.Fatalf("results: %d, %v", got, err)
		}
	}))
	t.Run("List", rapid.MakeCheck(func(t *rapid.T) {
		prefix, limit := rapid.String().Draw(t, "prefix"), rapid.Int().Draw(t, "limit")
		if p, l, err := kvListArgs(kvListAppendArgs(nil, prefix, limit)); err != nil || p != prefix || l != limit {
			t.Fatalf("args: %q %d, %v", p, l, err)
		}
		es, more := genEntries().Draw(t, "entries"), rapid.Bool().Draw(t, "more")
		res := kvListAppendResults(nil, es, more)
		got, gotMore, err := kvListResults(res)
		if err != nil || !reflect.DeepEqual(got, es) || gotMore != more {
			t.Fatalf("results: %+v %v, %v; want %+v %v", got, gotMore, err, es, more)
		}
		checkPrefixes(t, res, func(b []byte) error { _, _, err := kvListResults(b); return err })
	}))
	t.Run("Touch", rapid.MakeCheck(func(t *rapid.T) {
		keys := rapid.SliceOfN(rapid.String(), 0, 6).Draw(t, "keys")
		if len(keys) == 0 {
			keys = nil
		}
		if got, err := kvTouchArgs(kvTouchAppendArgs(nil, keys)); err != nil || !reflect.DeepEqual(got, keys) {
			t.Fatalf("args: %q, %v", got, err)
		}
	}))
	t.Run("Stats", rapid.MakeCheck(func(t *rapid.T) {
		st := genStats().Draw(t, "stats")
		res := kvStatsAppendResults(nil, st)
		if got, err := kvStatsResults(res); err != nil || !reflect.DeepEqual(got, st) {
			t.Fatalf("results: %+v, %v; want %+v", got, err, st)
		}
		checkPrefixes(t, res, func(b []byte) error { _, err := kvStatsResults(b); return err })
	}))
}

// TestDeclaredErrorsRoundTrip: a declared error crosses as its sentinel
// and message; anything else is left to the engine.
func TestDeclaredErrorsRoundTrip(t *testing.T) {
	var resp engine.Response
	resp.Body = append(resp.Body, "leftover results"...)
	if err := stub.Fail(&resp, kvErrors, ErrConflict); err != nil {
		t.Fatalf("stub.Fail kept a declared error: %v", err)
	}
	_, err := kvAddResults(resp.Body)
	if !errors.Is(err, ErrConflict) || !errors.Is(err, engine.ErrFailed) || err.Error() != ErrConflict.Error() {
		t.Fatalf("decoded %v", err)
	}
	other := errors.New("disk on fire")
	resp.Body = resp.Body[:0]
	if err := stub.Fail(&resp, kvErrors, other); err != other || len(resp.Body) != 0 {
		t.Fatalf("stub.Fail took an undeclared error: %v, body % x", err, resp.Body)
	}
}

// TestDecodersRefuseBeforeAllocating: a length prefix larger than the
// bytes left is an error, found before anything is allocated for it.
func TestDecodersRefuseBeforeAllocating(t *testing.T) {
	huge := []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3} // 4 GiB claimed, 3 bytes present
	for name, dec := range map[string]func([]byte) error{
		"string":  func(b []byte) error { _, _, err := stub.String(b); return err },
		"bytes":   func(b []byte) error { _, _, err := stub.Bytes(b); return err },
		"entries": func(b []byte) error { _, _, err := kvDecSliceEntry(b); return err },
		"map":     func(b []byte) error { _, _, err := kvDecMapStringString(b); return err },
	} {
		var err error
		allocs := testing.AllocsPerRun(100, func() { err = dec(huge) })
		if !errors.Is(err, stub.ErrLength) || allocs != 0 {
			t.Errorf("%s: %v after %v allocations, want stub.ErrLength and none", name, err, allocs)
		}
	}
	// Three entries of at least 15 bytes each cannot fit in 40 bytes.
	b := append([]byte{3}, make([]byte, 40)...)
	if _, _, err := kvDecSliceEntry(b); !errors.Is(err, stub.ErrLength) {
		t.Errorf("3 entries in 40 bytes: %v", err)
	}
	// A length written in more bytes than needed is refused too.
	if _, _, err := stub.String([]byte{0x81, 0x00, 'a'}); !errors.Is(err, stub.ErrVarint) {
		t.Errorf("overlong length: %v", err)
	}
}

// FuzzKVDecoders feeds arbitrary bytes to every decoder of the service:
// none may panic or allocate past the input (the race detector and the
// fuzzer's memory limit would notice), and whatever one accepts must
// re-encode to as many bytes.
func FuzzKVDecoders(f *testing.F) {
	// Valid encodings of each procedure's arguments and results.
	f.Add(kvGetAppendArgs(nil, "key"))
	f.Add(kvGetAppendResults(nil, Entry{Key: "k", Value: []byte("v"), Version: 3, Meta: Meta{Writer: 2, Labels: map[string]string{"a": "b"}}}))
	f.Add(kvPutAppendArgs(nil, "k", []byte{1, 2}, map[string]string{"x": "y", "": ""}, 7))
	f.Add(kvAddAppendArgs(nil, "hits", -1))
	f.Add(kvListAppendResults(nil, []Entry{{Key: "a"}, {Key: "b"}}, true))
	f.Add(kvStatsAppendResults(nil, Stats{Keys: 1, Counters: map[string]int64{"c": 9}}))
	f.Add(kvTouchAppendArgs(nil, []string{"a", "b", "c"}))
	// A declared error reply, and one with an unknown status.
	f.Add(append([]byte{1}, stub.AppendString(nil, "not found")...))
	f.Add([]byte{200, 0})
	// Lengths over what is left: a 4 GiB string, a million entries.
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 'a'})
	f.Add([]byte{0, 0xc0, 0x84, 0x3d})
	// An overlong length, a bool of 2 (List's "more"), nothing at all.
	f.Add([]byte{0x80, 0x00})
	f.Add([]byte{0, 0, 2})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := kvCheckDecoders(b); err != nil {
			t.Fatal(err)
		}
	})
}
