package wiretest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"
	"pgregory.net/rapid"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/engine/stub"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// nilIfEmpty draws from g and returns nil for an empty result: the wire
// does not tell nil from empty, and decoders return nil.
func nilIfEmpty[S ~[]E, E any](g *rapid.Generator[S]) *rapid.Generator[S] {
	return rapid.Map(g, func(s S) S {
		if len(s) == 0 {
			return nil
		}
		return s
	})
}

func nilIfEmptyMap[M ~map[K]V, K comparable, V any](g *rapid.Generator[M]) *rapid.Generator[M] {
	return rapid.Map(g, func(m M) M {
		if len(m) == 0 {
			return nil
		}
		return m
	})
}

func genPoint() *rapid.Generator[Point] {
	return rapid.Custom(func(t *rapid.T) Point {
		return Point{X: rapid.Int32().Draw(t, "x"), Y: rapid.Int32().Draw(t, "y")}
	})
}

func genTags() *rapid.Generator[Tags] {
	return nilIfEmpty(rapid.Map(rapid.SliceOfN(rapid.String(), 0, 4), func(s []string) Tags { return Tags(s) }))
}

func genGroup() *rapid.Generator[Group] {
	return rapid.Custom(func(t *rapid.T) Group {
		return Group{
			Name:    Name(rapid.String().Draw(t, "name")),
			Members: nilIfEmpty(rapid.SliceOfN(genPoint(), 0, 4)).Draw(t, "members"),
			Attrs:   nilIfEmptyMap(rapid.MapOfN(rapid.String(), genPoint(), 0, 3)).Draw(t, "attrs"),
			Sub:     nilIfEmpty(rapid.SliceOfN(genTags(), 0, 3)).Draw(t, "sub"),
		}
	})
}

func genAll() *rapid.Generator[All] {
	return rapid.Custom(func(t *rapid.T) All {
		// NaN never equals itself: draw floats from their bits and compare
		// bits, so that every payload is checked to travel unchanged.
		return All{
			B: rapid.Bool().Draw(t, "b"), I8: rapid.Int8().Draw(t, "i8"), U8: rapid.Uint8().Draw(t, "u8"),
			I16: rapid.Int16().Draw(t, "i16"), U16: rapid.Uint16().Draw(t, "u16"),
			I32: rapid.Int32().Draw(t, "i32"), U32: rapid.Uint32().Draw(t, "u32"),
			I64: rapid.Int64().Draw(t, "i64"), U64: rapid.Uint64().Draw(t, "u64"),
			I: rapid.Int().Draw(t, "i"), U: rapid.Uint().Draw(t, "u"),
			F32: math.Float32frombits(rapid.Uint32().Draw(t, "f32")),
			F64: math.Float64frombits(rapid.Uint64().Draw(t, "f64")),
			S:   rapid.String().Draw(t, "s"),
			Bs:  nilIfEmpty(rapid.SliceOfN(rapid.Byte(), 0, 16)).Draw(t, "bs"),
			R:   rapid.Rune().Draw(t, "r"), By: rapid.Byte().Draw(t, "by"),
			Lvl: Level(rapid.Int8().Draw(t, "lvl")), Nm: Name(rapid.String().Draw(t, "nm")),
			Bl: nilIfEmpty(rapid.Map(rapid.SliceOfN(rapid.Byte(), 0, 8), func(b []byte) Blob { return b })).Draw(t, "bl"),
			Tg: genTags().Draw(t, "tg"),
			Ix: nilIfEmptyMap(rapid.Map(rapid.MapOfN(rapid.Uint16(), rapid.String(), 0, 4), func(m map[uint16]string) Index {
				ix := Index{}
				for k, v := range m {
					ix[k] = Name(v)
				}
				return ix
			})).Draw(t, "ix"),
			Pts:   nilIfEmpty(rapid.SliceOfN(genPoint(), 0, 5)).Draw(t, "pts"),
			Grid:  nilIfEmpty(rapid.SliceOfN(nilIfEmpty(rapid.SliceOfN(rapid.Int16(), 0, 4)), 0, 4)).Draw(t, "grid"),
			ByKey: nilIfEmptyMap(rapid.MapOfN(rapid.Int64(), nilIfEmpty(rapid.SliceOfN(genPoint(), 0, 3)), 0, 3)).Draw(t, "bykey"),
			Flags: nilIfEmptyMap(rapid.MapOfN(rapid.Bool(), rapid.String(), 0, 2)).Draw(t, "flags"),
			Group: genGroup().Draw(t, "group"),
		}
	})
}

// sameAll compares with floats by their bits.
func sameAll(a, b All) bool {
	if math.Float32bits(a.F32) != math.Float32bits(b.F32) || math.Float64bits(a.F64) != math.Float64bits(b.F64) {
		return false
	}
	a.F32, a.F64, b.F32, b.F64 = 0, 0, 0, 0
	return reflect.DeepEqual(a, b)
}

func TestRoundTripAll(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a := genAll().Draw(t, "all")
		args := wireEchoAppendArgs(nil, a)
		got, err := wireEchoArgs(args)
		if err != nil || !sameAll(got, a) {
			t.Fatalf("arguments: %+v, %v\nwant %+v", got, err, a)
		}
		res := wireEchoAppendResults(nil, a)
		if got, err = wireEchoResults(res); err != nil || !sameAll(got, a) {
			t.Fatalf("results: %+v, %v\nwant %+v", got, err, a)
		}
		// Input split at any byte is refused, never misread.
		for i := range args {
			if _, err := wireEchoArgs(args[:i]); !errors.Is(err, engine.ErrCantDecodeArgs) {
				t.Fatalf("%d of %d bytes: %v", i, len(args), err)
			}
		}
	})
}

func TestRoundTripMany(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		b, n, s := rapid.Bool().Draw(t, "b"), rapid.Int().Draw(t, "n"), rapid.String().Draw(t, "s")
		m := nilIfEmptyMap(rapid.MapOfN(rapid.String(), nilIfEmpty(rapid.SliceOfN(rapid.Byte(), 0, 5)), 0, 4)).Draw(t, "m")
		groups := nilIfEmpty(rapid.SliceOfN(genGroup(), 0, 3)).Draw(t, "groups")
		gb, gn, gs, gm, gg, err := wireManyArgs(wireManyAppendArgs(nil, b, n, s, m, groups))
		if err != nil || gb != b || gn != n || gs != s || !reflect.DeepEqual(gm, m) || !reflect.DeepEqual(gg, groups) {
			t.Fatalf("arguments: %v %v %q %v %+v, %v", gb, gn, gs, gm, gg, err)
		}
		lvl, name, tags := Level(rapid.Int8().Draw(t, "lvl")), Name(rapid.String().Draw(t, "name")), genTags().Draw(t, "tags")
		l, nm, tg, err := wireManyResults(wireManyAppendResults(nil, lvl, name, tags))
		if err != nil || l != lvl || nm != name || !reflect.DeepEqual(tg, tags) {
			t.Fatalf("results: %v %q %q, %v", l, nm, tg, err)
		}
	})
}

// TestStrictDecoding: each encoding has one reading; anything else is an
// error, not a guess.
func TestStrictDecoding(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want error
	}{
		{"bool of 2", []byte{2}, stub.ErrBool},
		{"truncated int32", []byte{1, 2, 3}, stub.ErrTruncated},
		{"overlong length", []byte{0x80, 0x00}, stub.ErrVarint},
		{"length overflowing 64 bits", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, stub.ErrVarint},
		{"duplicate map key", []byte{2, 1, 0, 1, 0}, stub.ErrDupKey},
		{"two points in 15 bytes", append([]byte{2}, make([]byte, 15)...), stub.ErrLength},
	} {
		var err error
		switch c.name {
		case "bool of 2":
			_, _, err = stub.Bool(c.in)
		case "truncated int32":
			_, _, err = stub.Int32(c.in)
		case "overlong length", "length overflowing 64 bits":
			_, _, err = stub.String(c.in)
		case "duplicate map key":
			_, _, err = wireDecMapBoolString(c.in)
		case "two points in 15 bytes":
			_, _, err = wireDecSlicePoint(c.in)
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// FuzzWireDecoders runs arbitrary bytes through every decoder icsgen
// generated for Wire.
func FuzzWireDecoders(f *testing.F) {
	full := All{B: true, I: -1, S: "s", Bs: []byte{1}, Nm: "n", Bl: Blob{2}, Tg: Tags{"t"}, Ix: Index{1: "one"},
		Pts: []Point{{1, 2}}, Grid: [][]int16{{1}, nil}, ByKey: map[int64][]Point{3: {{4, 5}}}, Flags: map[bool]string{true: "y"},
		Group: Group{Name: "g", Members: []Point{{6, 7}}, Attrs: map[string]Point{"a": {8, 9}}, Sub: []Tags{{"x"}}}}
	// Valid encodings: every field set, all zero, Many's both ways.
	f.Add(wireEchoAppendArgs(nil, full))
	f.Add(wireEchoAppendResults(nil, All{}))
	f.Add(wireManyAppendArgs(nil, true, 7, "s", map[string][]byte{"k": {1}}, []Group{full.Group}))
	f.Add(wireManyAppendResults(nil, -3, "name", Tags{"a", "b"}))
	f.Add(wireNotifyAppendArgs(nil, Point{1, 2}))
	// Status bytes: success with nothing after it, and an unknown one.
	f.Add([]byte{0})
	f.Add([]byte{1, 0})
	// Lengths past the end, overlong and overflowing lengths.
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{0x80, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := wireCheckDecoders(b); err != nil {
			t.Fatal(err)
		}
	})
}

// server implements Wire for the cross-node test.
type server struct{ notified chan Point }

func (s *server) Echo(_ context.Context, a All) (All, error) { return a, nil }

func (s *server) Many(_ context.Context, from engine.NodeNum, b bool, n int, str string, m map[string][]byte, groups []Group) (Level, Name, Tags, error) {
	if !b {
		return 0, "", nil, fmt.Errorf("wiretest: b is false (n=%d)", n)
	}
	return Level(from), Name(fmt.Sprintf("%s/%d/%d/%d", str, n, len(m), len(groups))), Tags{"from", fmt.Sprint(from)}, nil
}

func (s *server) Nothing(context.Context) error { return nil }

func (s *server) Notify(_ context.Context, p Alias) { s.notified <- p }

func TestWireAcrossNodes(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	srv := &server{notified: make(chan Point, 1)}
	if err := RegisterWire(nodes[1], srv); err != nil {
		t.Fatal(err)
	}
	c := NewWireClient(nodes[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	full := All{B: true, I64: math.MinInt64, F64: math.Inf(-1), S: "héllo", Tg: Tags{"a"}, Grid: [][]int16{{1, 2}, {3}},
		ByKey: map[int64][]Point{-1: {{1, 1}}}, Group: Group{Name: "g", Attrs: map[string]Point{"p": {3, 4}}}}
	if got, err := c.Echo(ctx, 2, full); err != nil || !sameAll(got, full) {
		t.Fatalf("Echo: %+v, %v", got, err)
	}
	lvl, name, tags, err := c.Many(ctx, 2, true, 42, "s", map[string][]byte{"k": nil}, []Group{{}, {}})
	if err != nil || lvl != 1 || name != "s/42/1/2" || !reflect.DeepEqual(tags, Tags{"from", "1"}) {
		t.Fatalf("Many: %v %q %q, %v", lvl, name, tags, err)
	}
	if _, _, _, err := c.Many(ctx, 2, false, 5, "", nil, nil); !errors.Is(err, engine.ErrFailed) {
		t.Fatalf("Many failing: %v, want engine.ErrFailed", err)
	}
	if err := c.Nothing(ctx, 2); err != nil {
		t.Fatalf("Nothing: %v", err)
	}
	if err := c.Notify(ctx, 2, Alias{X: 5, Y: -5}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-srv.notified:
		if p != (Point{5, -5}) {
			t.Fatalf("notified %+v", p)
		}
	case <-ctx.Done():
		t.Fatal("one-way Notify never served")
	}
	// Procedure numbers the dispatch table leaves empty.
	for _, proc := range []uint32{1, 4, 8} {
		_, err := nodes[0].Call(ctx, 2, engine.Method{Service: WireServiceID, Proc: proc, Version: WireVersion}, nil, nil)
		if !errors.Is(err, engine.ErrProcUnavail) {
			t.Errorf("proc %d: %v, want ErrProcUnavail", proc, err)
		}
	}
}
