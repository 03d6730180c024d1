package framing

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"
)

// compressible returns n bytes of repetitive text.
func compressible(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "node %d joined channel %d at incarnation %d; ", i%17, i%5, i/3)
	}
	return b.Bytes()[:n]
}

// incompressible returns n bytes that no codec can shrink.
func incompressible(n int) []byte {
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	p := make([]byte, n)
	r.Read(p)
	return p
}

// allocated reports the bytes f allocates on the heap. Tests that use it
// do not run in parallel, so other work barely disturbs the count.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

var algos = []struct {
	algo Compression
	flag Flags
}{{CompressS2, FlagS2}, {CompressZstd, FlagZstd}}

func TestCompressRoundTrip(t *testing.T) {
	c := NewCodec(0)
	defer c.Close()
	for _, a := range algos {
		for _, size := range []int{100, 4096, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d", a.algo, size), func(t *testing.T) {
				src := compressible(size)
				prefix := []byte("dst-prefix")
				comp, flag, err := c.Compress(bytes.Clone(prefix), src, a.algo)
				if err != nil {
					t.Fatalf("Compress: %v", err)
				}
				if flag != a.flag {
					t.Fatalf("Compress flag %#x, want %#x", flag, a.flag)
				}
				if !bytes.HasPrefix(comp, prefix) {
					t.Fatal("Compress overwrote dst")
				}
				payload := comp[len(prefix):]
				if len(payload) >= len(src) {
					t.Fatalf("%d bytes compressed to %d", len(src), len(payload))
				}

				// The header a sender would build must pass DecodeHeader.
				h := Header{Type: TypeRequest, Flags: flag, Length: uint32(len(payload)), Aux: uint32(len(src))}
				if _, err := DecodeHeader(AppendHeader(nil, &h), DefaultMaxPayload); err != nil {
					t.Fatalf("DecodeHeader: %v", err)
				}

				// Decode into a buffer with exactly enough room: nothing is
				// allocated beyond it.
				dst := make([]byte, len(prefix), len(prefix)+len(src))
				copy(dst, prefix)
				out, err := c.Decompress(dst, &h, payload)
				if err != nil {
					t.Fatalf("Decompress: %v", err)
				}
				if !bytes.Equal(out[:len(prefix)], prefix) || !bytes.Equal(out[len(prefix):], src) {
					t.Fatal("Decompress did not give back the input after the prefix")
				}
				if &out[0] != &dst[0] {
					t.Fatal("Decompress reallocated a dst that had room")
				}
			})
		}
	}
}

func TestCompressIncompressible(t *testing.T) {
	c := NewCodec(0)
	defer c.Close()
	for _, a := range algos {
		for _, src := range [][]byte{nil, {1}, incompressible(64), incompressible(64 << 10)} {
			prefix := []byte("keep")
			out, flag, err := c.Compress(bytes.Clone(prefix), src, a.algo)
			if err != nil {
				t.Fatalf("%s: Compress(%d random bytes): %v", a.algo, len(src), err)
			}
			if flag != 0 || !bytes.Equal(out, prefix) {
				t.Fatalf("%s: Compress(%d random bytes) = %d bytes, flag %#x; want dst unchanged, no flag", a.algo, len(src), len(out), flag)
			}
		}
	}
}

func TestCompressNoneAndUnknown(t *testing.T) {
	c := NewCodec(0)
	defer c.Close()
	src := compressible(1000)
	out, flag, err := c.Compress([]byte("x"), src, CompressNone)
	if err != nil || flag != 0 || string(out) != "x" {
		t.Fatalf("Compress(none) = %q, %#x, %v", out, flag, err)
	}
	if _, _, err := c.Compress(nil, src, Compression(9)); err == nil {
		t.Fatal("Compress with an unknown algorithm succeeded")
	}
	if c.zenc != nil || c.zdec != nil {
		t.Fatal("zstd coders built without zstd being asked for")
	}
}

// TestDecompressUncompressed checks frames without a compression flag: the
// payload is copied, aux is ignored, and the codec's limit still holds.
func TestDecompressUncompressed(t *testing.T) {
	c := NewCodec(1024)
	defer c.Close()
	payload := pattern(1, 1024)
	out, err := c.Decompress([]byte("p"), &Header{Type: TypeRequest, Aux: math.MaxUint32}, payload)
	if err != nil || !bytes.Equal(out, append([]byte("p"), payload...)) {
		t.Fatalf("Decompress(uncompressed, aux max) = %d bytes, %v", len(out), err)
	}
	out, err = c.Decompress([]byte("p"), &Header{Type: TypeRequest}, pattern(1, 1025))
	if !errors.Is(err, ErrFrameTooLarge) || string(out) != "p" {
		t.Fatalf("Decompress(uncompressed, 1025 bytes, limit 1024) = %d bytes, %v; want %v", len(out), err, ErrFrameTooLarge)
	}
}

// TestDecompressOverLimitBeforeAllocating announces sizes over the codec's
// limit: the refusal comes from the header alone, allocates nothing for the
// payload and does not even build the zstd decoder.
func TestDecompressOverLimitBeforeAllocating(t *testing.T) {
	const limit = 1 << 20
	for _, a := range algos {
		for _, aux := range []uint32{limit + 1, math.MaxUint32} {
			c := NewCodec(limit)
			dst := make([]byte, 3, 16)
			var out []byte
			var err error
			n := allocated(func() {
				out, err = c.Decompress(dst, &Header{Type: TypeRequest, Flags: a.flag, Length: 10, Aux: aux}, make([]byte, 10))
			})
			if !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("%s aux %d: err %v, want %v", a.algo, aux, err, ErrFrameTooLarge)
			}
			if len(out) != 3 || cap(out) != 16 || &out[0] != &dst[0] {
				t.Fatalf("%s aux %d: dst changed (len %d cap %d)", a.algo, aux, len(out), cap(out))
			}
			// Only the error itself, with room for runtime noise: far
			// from the 1 MiB+ that was announced.
			if n > 64<<10 {
				t.Fatalf("%s aux %d: %d bytes allocated to refuse it", a.algo, aux, n)
			}
			if c.zdec != nil {
				t.Fatalf("%s aux %d: zstd decoder built for a frame refused by its header", a.algo, aux)
			}
			c.Close()
		}
	}
}

// TestDecompressSizeMismatch gives payloads whose real decoded size is not
// the one the header announces, or that are corrupt.
func TestDecompressSizeMismatch(t *testing.T) {
	c := NewCodec(1 << 20)
	defer c.Close()
	src := compressible(10000)
	for _, a := range algos {
		comp, flag, err := c.Compress(nil, src, a.algo)
		if err != nil || flag != a.flag {
			t.Fatalf("%s: Compress = %#x, %v", a.algo, flag, err)
		}
		n := uint32(len(src))
		tests := []struct {
			name    string
			aux     uint32
			payload []byte
		}{
			{"aux-one-less", n - 1, comp},
			{"aux-one-more", n + 1, comp},
			{"aux-half", n / 2, comp},
			{"aux-zero", 0, comp},
			{"aux-limit", 1 << 20, comp},
			{"truncated", n, comp[:len(comp)-1]},
			{"half", n, comp[:len(comp)/2]},
			{"empty", n, nil},
			{"garbage", n, incompressible(len(comp))},
			{"other-algorithm", n, otherAlgo(t, a.algo, src)},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", a.algo, tt.name), func(t *testing.T) {
				prefix := []byte("prefix")
				dst := spareDst(prefix, 4*len(src))
				h := Header{Type: TypeReply, Flags: flag, Length: uint32(len(tt.payload)), Aux: tt.aux}
				out, err := c.Decompress(dst, &h, tt.payload)
				if !errors.Is(err, ErrDecompress) {
					t.Fatalf("Decompress = %d bytes, %v; want %v", len(out), err, ErrDecompress)
				}
				if !bytes.Equal(out, prefix) {
					t.Fatalf("Decompress failed but left %d bytes, want the %d-byte prefix", len(out), len(prefix))
				}
				checkSpare(t, dst, len(prefix)+int(tt.aux))
			})
		}
	}
}

// spareDst returns prefix in a buffer with spare bytes of capacity, set
// to 0xee so checkSpare can tell whether anything wrote into them.
func spareDst(prefix []byte, spare int) []byte {
	dst := make([]byte, len(prefix)+spare)
	copy(dst, prefix)
	for i := len(prefix); i < len(dst); i++ {
		dst[i] = 0xee
	}
	return dst[:len(prefix)]
}

// checkSpare fails if anything was written into dst's capacity from offset
// from on: Decompress must not write past the size the header announced,
// however much room the caller left.
func checkSpare(t *testing.T, dst []byte, from int) {
	t.Helper()
	full := dst[:cap(dst)]
	for i := from; i < len(full); i++ {
		if full[i] != 0xee {
			t.Fatalf("byte %d written, past the %d announced", i, from)
		}
	}
}

// otherAlgo compresses src with the algorithm that is not algo, straight
// from the library.
func otherAlgo(t *testing.T, algo Compression, src []byte) []byte {
	if algo == CompressZstd {
		return s2.Encode(nil, src)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(src, nil)
}

// zstdBombs are 64 MiB of zeros compressed three ways: with the size in the
// frame header, streamed so the frame does not announce its size and the
// decoder must actually run into the limit, and with a window larger than
// the limit. Each is a few KiB.
var zstdBombs = sync.OnceValue(func() []struct {
	name    string
	payload []byte
} {
	zeros := make([]byte, 64<<20)
	small, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(128<<10))
	if err != nil {
		panic(err)
	}
	defer small.Close()
	withSize := small.EncodeAll(zeros, nil)
	var stream bytes.Buffer
	small.Reset(&stream)
	if _, err := small.Write(zeros); err != nil {
		panic(err)
	}
	if err := small.Close(); err != nil {
		panic(err)
	}
	big, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20))
	if err != nil {
		panic(err)
	}
	defer big.Close()
	var bigStream bytes.Buffer
	big.Reset(&bigStream)
	big.Write(zeros)
	big.Close()
	return []struct {
		name    string
		payload []byte
	}{
		{"content-size", withSize},
		{"streamed", stream.Bytes()},
		{"large-window", bigStream.Bytes()},
	}
})

// TestDecompressZstdBomb feeds 64 MiB of compressed zeros whose header lies
// that they are small to a codec limited to 1 MiB. It must fail, return
// nothing, and allocate about the announced size, not the bomb's.
func TestDecompressZstdBomb(t *testing.T) {
	const limit = 1 << 20
	c := NewCodec(limit)
	defer c.Close()
	// Build the zstd decoder before measuring.
	warm, _, _ := c.Compress(nil, compressible(1000), CompressZstd)
	if _, err := c.Decompress(nil, &Header{Flags: FlagZstd, Aux: 1000}, warm); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	for _, bomb := range zstdBombs() {
		if len(bomb.payload) > 64<<10 {
			t.Fatalf("%s: bomb of %d bytes is not a bomb", bomb.name, len(bomb.payload))
		}
		for _, aux := range []uint32{1000, limit} {
			t.Run(fmt.Sprintf("%s/aux-%d", bomb.name, aux), func(t *testing.T) {
				prefix := []byte("prefix")
				dst := spareDst(prefix, 2*limit)
				var out []byte
				var err error
				n := allocated(func() {
					out, err = c.Decompress(dst, &Header{Type: TypeReply, Flags: FlagZstd, Length: uint32(len(bomb.payload)), Aux: aux}, bomb.payload)
				})
				if !errors.Is(err, ErrDecompress) {
					t.Fatalf("Decompress = %d bytes, %v; want %v", len(out), err, ErrDecompress)
				}
				if !bytes.Equal(out, prefix) {
					t.Fatalf("Decompress returned %d bytes, want only the prefix", len(out))
				}
				checkSpare(t, dst, len(prefix)+int(aux))
				// The aux-sized buffer, plus at most one zstd block (128 KiB)
				// decoded past it into a reallocated buffer before the
				// library notices: a few MiB, never the bomb's 64.
				if n > 4<<20 {
					t.Fatalf("decoding the bomb allocated %d bytes", n)
				}
			})
		}
	}
}

// TestCodecConcurrent shares one codec between goroutines, for -race.
func TestCodecConcurrent(t *testing.T) {
	c := NewCodec(0)
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				a := algos[(g+i)%len(algos)]
				src := compressible(1000 + 100*g + i)
				comp, flag, err := c.Compress(nil, src, a.algo)
				if err != nil || flag != a.flag {
					errs <- fmt.Errorf("%s: Compress = %#x, %v", a.algo, flag, err)
					return
				}
				out, err := c.Decompress(nil, &Header{Flags: flag, Aux: uint32(len(src))}, comp)
				if err != nil || !bytes.Equal(out, src) {
					errs <- fmt.Errorf("%s: Decompress = %d bytes, %v", a.algo, len(out), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCodecCloseNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	c := NewCodec(0)
	src := compressible(100000)
	comp, flag, err := c.Compress(nil, src, CompressZstd)
	if err != nil || flag != FlagZstd {
		t.Fatalf("Compress = %#x, %v", flag, err)
	}
	if out, err := c.Decompress(nil, &Header{Flags: flag, Aux: uint32(len(src))}, comp); err != nil || !bytes.Equal(out, src) {
		t.Fatalf("Decompress = %d bytes, %v", len(out), err)
	}
	c.Close()
	goleak.VerifyNone(t, before)
	c.Close() // twice is harmless

	// A closed codec refuses zstd work instead of crashing on it.
	if out, err := c.Decompress(nil, &Header{Flags: flag, Aux: uint32(len(src))}, comp); err == nil {
		t.Fatalf("Decompress after Close = %d bytes, nil error", len(out))
	}
	goleak.VerifyNone(t, before)
}

// TestCodecClosedBeforeZstd closes a codec that never built its zstd coders:
// zstd work afterwards fails with ErrCodecClosed and starts nothing, and S2,
// which needs no coder, still works.
func TestCodecClosedBeforeZstd(t *testing.T) {
	before := goleak.IgnoreCurrent()
	c := NewCodec(0)
	c.Close()
	src := compressible(1000)
	if _, _, err := c.Compress(nil, src, CompressZstd); !errors.Is(err, ErrCodecClosed) {
		t.Fatalf("Compress(zstd) after Close = %v, want %v", err, ErrCodecClosed)
	}
	if _, err := c.Decompress(nil, &Header{Flags: FlagZstd, Aux: 10}, []byte("xx")); !errors.Is(err, ErrCodecClosed) {
		t.Fatalf("Decompress(zstd) after Close = %v, want %v", err, ErrCodecClosed)
	}
	if c.zenc != nil || c.zdec != nil {
		t.Fatal("zstd coders built after Close")
	}
	comp, flag, err := c.Compress(nil, src, CompressS2)
	if err != nil || flag != FlagS2 {
		t.Fatalf("Compress(s2) after Close = %#x, %v", flag, err)
	}
	if out, err := c.Decompress(nil, &Header{Flags: flag, Aux: uint32(len(src))}, comp); err != nil || !bytes.Equal(out, src) {
		t.Fatalf("Decompress(s2) after Close = %d bytes, %v", len(out), err)
	}
	goleak.VerifyNone(t, before)
}

func TestParseCompression(t *testing.T) {
	tests := []struct {
		in   string
		want Compression
		ok   bool
	}{
		{"", CompressNone, true},
		{"none", CompressNone, true},
		{"s2", CompressS2, true},
		{"zstd", CompressZstd, true},
		{"S2", 0, false},
		{"gzip", 0, false},
		{" zstd", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseCompression(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseCompression(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
		if tt.ok && tt.in != "" {
			if s := got.String(); s != tt.in {
				t.Errorf("%q parsed to %v, which prints as %q", tt.in, got, s)
			}
		}
	}
	if s := Compression(7).String(); !strings.Contains(s, "7") {
		t.Errorf("Compression(7).String() = %q", s)
	}
}

// TestDecompressTinyLiarsAllocateNothing (issue 8 point 8): a frame of a
// few bytes that announces the largest size must not make the codec
// allocate that size before finding out the bytes cannot produce it (20
// such frames allocated 320 MiB). Both announce the size twice, in the
// header's aux and in the codec's own size field, consistently.
func TestDecompressTinyLiarsAllocateNothing(t *testing.T) {
	const limit = DefaultMaxPayload
	c := NewCodec(limit)
	defer c.Close()
	if _, err := c.Decompress(nil, &Header{Flags: FlagZstd, Aux: 1000}, mustZstd(t, c, compressible(1000))); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	s2Liar := binary.AppendUvarint(nil, limit) // s2: the decoded length, then nothing worth it
	s2Liar = append(s2Liar, 0x00, 'x')
	// zstd: magic, a single-segment frame header with a 4-byte content
	// size, and the start of a block.
	zstdLiar := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xa0}
	zstdLiar = binary.LittleEndian.AppendUint32(zstdLiar, limit)
	zstdLiar = append(zstdLiar, 0x01, 0x00)
	for _, tc := range []struct {
		name    string
		flag    Flags
		payload []byte
	}{{"s2", FlagS2, s2Liar}, {"zstd", FlagZstd, zstdLiar}} {
		t.Run(tc.name, func(t *testing.T) {
			var errs int
			n := allocated(func() {
				for i := 0; i < 20; i++ {
					if _, err := c.Decompress(nil, &Header{Type: TypeRequest, Flags: tc.flag, Length: uint32(len(tc.payload)), Aux: limit}, tc.payload); err != nil {
						errs++
					}
				}
			})
			if errs != 20 {
				t.Fatalf("%d of 20 liars refused", errs)
			}
			if n > 1<<20 {
				t.Fatalf("20 liars of %d bytes allocated %d MiB", len(tc.payload), n>>20)
			}
		})
	}
}

// TestDecompressRealS2Bomb: a valid s2 block of a few dozen bytes that
// does decode to 1 MiB (repeat operations) decodes correctly: the bound
// is what the input can produce, and this input can.
func TestDecompressRealS2Bomb(t *testing.T) {
	c := NewCodec(0)
	defer c.Close()
	src := make([]byte, 1<<20)
	comp := s2.Encode(nil, src)
	if len(comp) > 128 {
		t.Fatalf("s2 made %d bytes of 1 MiB of zeros: not a bomb", len(comp))
	}
	out, err := c.Decompress(nil, &Header{Flags: FlagS2, Aux: uint32(len(src))}, comp)
	if err != nil || !bytes.Equal(out, src) {
		t.Fatalf("real bomb: %d bytes, %v", len(out), err)
	}
	if n, err := s2Length(comp, len(src)); err != nil || n != len(src) {
		t.Fatalf("s2Length = %d, %v", n, err)
	}
}

func mustZstd(t *testing.T, c *Codec, src []byte) []byte {
	t.Helper()
	out, flag, err := c.Compress(nil, src, CompressZstd)
	if err != nil || flag != FlagZstd {
		t.Fatalf("zstd: %v flag %v", err, flag)
	}
	return out
}
