package stub

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/clusterinfra/ci/engine"
)

// codec is one basic type's encoder and decoder, over any, so that one
// table covers them all.
type codec struct {
	name  string
	size  int // fixed wire size; 0 for length-prefixed types
	enc   func(b []byte, v any) []byte
	dec   func(d []byte) (any, []byte, error)
	vals  []any
	dummy any // the zero value a failed decode returns
}

func mk[T any](name string, size int, enc func([]byte, T) []byte, dec func([]byte) (T, []byte, error), vals ...T) codec {
	c := codec{
		name: name, size: size,
		enc: func(b []byte, v any) []byte { return enc(b, v.(T)) },
		dec: func(d []byte) (any, []byte, error) { return dec(d) },
	}
	var zero T
	c.dummy = zero
	for _, v := range vals {
		c.vals = append(c.vals, v)
	}
	return c
}

var codecs = []codec{
	mk("bool", 1, AppendBool, Bool, false, true),
	mk("int8", 1, AppendInt8, Int8, 0, -1, math.MinInt8, math.MaxInt8),
	mk("uint8", 1, AppendUint8, Uint8, 0, 1, math.MaxUint8),
	mk("int16", 2, AppendInt16, Int16, 0, -300, math.MinInt16, math.MaxInt16),
	mk("uint16", 2, AppendUint16, Uint16, 0, 65000, math.MaxUint16),
	mk("int32", 4, AppendInt32, Int32, 0, -70000, math.MinInt32, math.MaxInt32),
	mk("uint32", 4, AppendUint32, Uint32, 0, 4e9, math.MaxUint32),
	mk("int64", 8, AppendInt64, Int64, 0, -1, math.MinInt64, math.MaxInt64),
	mk("uint64", 8, AppendUint64, Uint64, 0, 1<<40, math.MaxUint64),
	mk("int", 8, AppendInt, Int, 0, -5, math.MinInt32, math.MaxInt32),
	mk("uint", 8, AppendUint, Uint, 0, 7, math.MaxUint32),
	mk("float32", 4, AppendFloat32, Float32, 0, 1.5, float32(math.Inf(-1)), math.MaxFloat32),
	mk("float64", 8, AppendFloat64, Float64, 0, math.Pi, math.Inf(1), -math.SmallestNonzeroFloat64),
	mk("string", 0, AppendString, String, "", "a", "héllo", string(make([]byte, 200))),
	mk("bytes", 0, AppendBytes, Bytes, nil, []byte{0}, []byte("xyz"), make([]byte, 300)),
}

// TestRoundTrip: every value decodes to itself, consuming exactly its
// encoding and leaving what follows it; every strict prefix of an
// encoding is refused.
func TestRoundTrip(t *testing.T) {
	tail := []byte{0xaa, 0xbb}
	for _, c := range codecs {
		t.Run(c.name, func(t *testing.T) {
			for _, v := range c.vals {
				enc := c.enc([]byte("prefix"), v)[len("prefix"):] // appends, keeps what was there
				if c.size > 0 && len(enc) != c.size {
					t.Fatalf("%v: %d bytes, want %d", v, len(enc), c.size)
				}
				got, rest, err := c.dec(append(append([]byte(nil), enc...), tail...))
				if err != nil || !reflect.DeepEqual(got, v) || !bytes.Equal(rest, tail) {
					t.Fatalf("%v: decoded %v, rest % x, %v", v, got, rest, err)
				}
				for n := range len(enc) {
					got, rest, err := c.dec(enc[:n])
					if err == nil {
						t.Fatalf("%v: prefix of %d bytes decoded as %v", v, n, got)
					}
					if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrLength) {
						t.Fatalf("%v: prefix of %d bytes: %v", v, n, err)
					}
					if rest != nil || !reflect.DeepEqual(got, c.dummy) {
						t.Fatalf("%v: failed decode returned %v, rest % x", v, got, rest)
					}
				}
			}
		})
	}
}

// TestPinnedEncodings pins the wire format byte for byte: it is shared by
// every node of a cluster, so a change here breaks mixed-version clusters
// even if every round trip still works.
func TestPinnedEncodings(t *testing.T) {
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"false", AppendBool(nil, false), "00"},
		{"true", AppendBool(nil, true), "01"},
		{"int8 -2", AppendInt8(nil, -2), "fe"},
		{"uint8 250", AppendUint8(nil, 250), "fa"},
		{"int16 -300", AppendInt16(nil, -300), "d4fe"},
		{"uint16 65000", AppendUint16(nil, 65000), "e8fd"},
		{"int32 -70000", AppendInt32(nil, -70000), "90eefeff"},
		{"uint32 4e9", AppendUint32(nil, 4e9), "00286bee"},
		{"int64 min", AppendInt64(nil, math.MinInt64), "0000000000000080"},
		{"uint64 max", AppendUint64(nil, math.MaxUint64), "ffffffffffffffff"},
		{"int -5 as 8 bytes", AppendInt(nil, -5), "fbffffffffffffff"},
		{"uint 1<<40 as 8 bytes", AppendUint(nil, 1<<40), "0000000000010000"},
		{"float32 1.5", AppendFloat32(nil, 1.5), "0000c03f"},
		{"float64 pi", AppendFloat64(nil, math.Pi), "182d4454fb210940"},
		{"empty string", AppendString(nil, ""), "00"},
		{"string", AppendString(nil, "héllo"), "0668c3a96c6c6f"},
		{"string of 200", AppendString(nil, string(make([]byte, 200)))[:2], "c801"},
		{"bytes", AppendBytes(nil, []byte{1, 2, 3}), "03010203"},
		{"nil bytes", AppendBytes(nil, nil), "00"},
		{"length 300", AppendLen(nil, 300), "ac02"},
	} {
		if got := hex.EncodeToString(c.got); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestStrict: each encoding has one reading; anything else is an error,
// not a guess.
func TestStrict(t *testing.T) {
	str := func(d []byte) error { _, _, err := String(d); return err }
	byt := func(d []byte) error { _, _, err := Bytes(d); return err }
	for _, c := range []struct {
		name string
		dec  func([]byte) error
		in   []byte
		want error
	}{
		{"bool of 2", func(d []byte) error { _, _, err := Bool(d); return err }, []byte{2}, ErrBool},
		{"bool of 0xff", func(d []byte) error { _, _, err := Bool(d); return err }, []byte{0xff}, ErrBool},
		{"empty bool", func(d []byte) error { _, _, err := Bool(d); return err }, nil, ErrTruncated},
		{"truncated int32", func(d []byte) error { _, _, err := Int32(d); return err }, []byte{1, 2, 3}, ErrTruncated},
		{"truncated float64", func(d []byte) error { _, _, err := Float64(d); return err }, make([]byte, 7), ErrTruncated},
		{"no length", str, nil, ErrTruncated},
		{"unfinished length", str, []byte{0x80}, ErrTruncated},
		{"non-shortest length 0", str, []byte{0x80, 0x00}, ErrVarint},
		{"non-shortest length 1", str, []byte{0x81, 0x00, 'a'}, ErrVarint},
		{"non-shortest bytes length", byt, []byte{0x82, 0x80, 0x00, 1, 2}, ErrVarint},
		{"length overflowing 64 bits", str, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, ErrVarint},
		{"string longer than the input", str, []byte{4, 'a', 'b', 'c'}, ErrLength},
		{"bytes longer than the input", byt, []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3}, ErrLength},
	} {
		if err := c.dec(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// TestDecLen: a count is checked against the bytes left divided by the
// smallest element, before the caller allocates for it.
func TestDecLen(t *testing.T) {
	for _, c := range []struct {
		in      []byte
		size, n int
		want    error
	}{
		{[]byte{0}, 1, 0, nil},
		{[]byte{3, 0, 0, 0}, 1, 3, nil},
		{[]byte{3, 0, 0, 0}, 2, 0, ErrLength},               // 3 items of 2 bytes in 3
		{append([]byte{2}, make([]byte, 16)...), 8, 2, nil}, // exactly enough
		{append([]byte{3}, make([]byte, 40)...), 15, 0, ErrLength},
		{[]byte{0x80, 0x00}, 1, 0, ErrVarint},
		{nil, 1, 0, ErrTruncated},
	} {
		n, rest, err := DecLen(c.in, c.size)
		if !errors.Is(err, c.want) || (err == nil && (n != c.n || len(rest) != len(c.in)-1)) {
			t.Errorf("DecLen(% x, %d) = %d, % x, %v; want %d, %v", c.in, c.size, n, rest, err, c.n, c.want)
		}
	}
	huge := []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3} // 4 GiB claimed, 3 bytes present
	var err error
	if allocs := testing.AllocsPerRun(100, func() { _, _, err = Bytes(huge) }); allocs != 0 || !errors.Is(err, ErrLength) {
		t.Errorf("Bytes of a 4 GiB claim: %v after %v allocations", err, allocs)
	}
}

var (
	errNotFound = errors.New("kv: not found")
	errConflict = errors.New("kv: conflict")
	svcErrors   = []error{errNotFound, errConflict}
)

// TestReplyStatus: declared errors cross as status i+1 and their message,
// and come back matching both the sentinel and engine.ErrFailed; other
// statuses and malformed error replies wrap engine.ErrCantDecodeRes.
func TestReplyStatus(t *testing.T) {
	var resp engine.Response
	resp.Body = append(resp.Body, "leftover results"...)
	wrapped := errors.Join(errConflict, errors.New("key k"))
	if err := Fail(&resp, svcErrors, wrapped); err != nil {
		t.Fatalf("Fail kept a declared error: %v", err)
	}
	if want := append([]byte{2}, AppendString(nil, wrapped.Error())...); !bytes.Equal(resp.Body, want) {
		t.Fatalf("body % x, want % x", resp.Body, want)
	}
	_, err := ReplyBody("kv", svcErrors, resp.Body)
	var re *RemoteError
	if !errors.Is(err, errConflict) || !errors.Is(err, engine.ErrFailed) || errors.Is(err, errNotFound) ||
		!errors.As(err, &re) || err.Error() != wrapped.Error() {
		t.Fatalf("decoded %v", err)
	}
	// One error model: the engine's RemoteError is the same type, and the
	// declared error's status is StatusFailed.
	var ere *engine.RemoteError
	if !errors.As(err, &ere) || ere.Declared != errConflict || ere.Code != engine.StatusFailed || engine.Code(err) != engine.StatusFailed {
		t.Fatalf("declared error as *engine.RemoteError: %#v, code %v", ere, engine.Code(err))
	}
	other := errors.New("disk on fire")
	resp.Body = resp.Body[:0]
	if err := Fail(&resp, svcErrors, other); err != other || len(resp.Body) != 0 {
		t.Fatalf("Fail took an undeclared error: %v, body % x", err, resp.Body)
	}
	if err := Fail(&resp, nil, other); err != other {
		t.Fatalf("Fail with no table: %v", err)
	}

	if rest, err := ReplyBody("kv", nil, []byte{0, 7, 8}); err != nil || !bytes.Equal(rest, []byte{7, 8}) {
		t.Fatalf("success: % x, %v", rest, err)
	}
	for name, c := range map[string]struct {
		errs []error
		in   []byte
		want error
	}{
		"empty":                  {svcErrors, nil, ErrTruncated},
		"unknown status":         {svcErrors, []byte{3, 0}, ErrStatus},
		"no table":               {nil, append([]byte{1}, AppendString(nil, "x")...), ErrStatus},
		"message truncated":      {svcErrors, []byte{1, 5, 'a'}, ErrStatus},
		"bytes after message":    {svcErrors, []byte{1, 1, 'a', 0}, ErrStatus},
		"non-shortest msg len":   {svcErrors, []byte{1, 0x81, 0x00, 'a'}, ErrStatus},
		"status 0xff, no errors": {nil, []byte{0xff}, ErrStatus},
	} {
		rest, err := ReplyBody("kv", c.errs, c.in)
		if !errors.Is(err, c.want) || !errors.Is(err, engine.ErrCantDecodeRes) || rest != nil {
			t.Errorf("%s: % x, %v; want %v", name, rest, err, c.want)
		}
	}
	if _, err := ReplyBody("kv", nil, nil); err.Error() != engine.ErrCantDecodeRes.Error()+": kv.reply: "+ErrTruncated.Error() {
		t.Errorf("message %q", err)
	}
}

// TestWrappers: decoding errors wrap the engine's sentinel, so that the
// engine reports the right status, and the cause, and name the method.
func TestWrappers(t *testing.T) {
	err := ArgsError("kv", "Get", ErrTrailing)
	if !errors.Is(err, engine.ErrCantDecodeArgs) || !errors.Is(err, ErrTrailing) ||
		err.Error() != engine.ErrCantDecodeArgs.Error()+": kv.Get: "+ErrTrailing.Error() {
		t.Errorf("ArgsError: %v", err)
	}
	err = ResultsError("kv", "Get", ErrBool)
	if !errors.Is(err, engine.ErrCantDecodeRes) || !errors.Is(err, ErrBool) || errors.Is(err, engine.ErrCantDecodeArgs) {
		t.Errorf("ResultsError: %v", err)
	}
}

// TestBufPool: buffers come back empty-able and reusable, and ones that
// grew past the limit are dropped rather than pinned.
func TestBufPool(t *testing.T) {
	var p BufPool
	b := p.Get()
	if b == nil {
		t.Fatal("nil Bufs")
	}
	b.Args = make([]byte, 0, maxPooled+1)
	b.Reply = make([]byte, 10, 100)
	p.Put(b)
	if b.Args != nil || cap(b.Reply) != 100 {
		t.Fatalf("after Put: args cap %d, reply cap %d", cap(b.Args), cap(b.Reply))
	}
}

// FuzzDecoders feeds arbitrary bytes to every decoder: none may panic,
// and whatever one accepts must re-encode to exactly the bytes it read,
// since every value has a single encoding.
func FuzzDecoders(f *testing.F) {
	for _, c := range codecs {
		for _, v := range c.vals {
			f.Add(c.enc(nil, v))
		}
	}
	f.Add([]byte{})
	f.Add([]byte{2})
	f.Add([]byte{0x80, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, c := range codecs {
			v, rest, err := c.dec(b)
			if err != nil {
				if rest != nil {
					t.Fatalf("%s: error %v with rest % x", c.name, err, rest)
				}
				continue
			}
			read := b[:len(b)-len(rest)]
			enc := c.enc(nil, v)
			// A float keeps its bits through a round trip, but leave the
			// hardware room with NaN payloads: only the length must match.
			float := c.name == "float32" || c.name == "float64"
			if !bytes.Equal(enc, read) && !(float && len(enc) == len(read)) {
				t.Fatalf("%s: read % x as %v, which encodes as % x", c.name, read, v, enc)
			}
		}
		for _, size := range []int{1, 2, 8, 15} {
			if n, rest, err := DecLen(b, size); err == nil && n > len(rest)/size {
				t.Fatalf("DecLen(% x, %d) = %d with %d bytes left", b, size, n, len(rest))
			}
		}
		if rest, err := ReplyBody("fuzz", svcErrors, b); err == nil && !bytes.Equal(rest, b[1:]) {
			t.Fatalf("ReplyBody(% x) = % x", b, rest)
		}
	})
}
