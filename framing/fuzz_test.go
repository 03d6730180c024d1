package framing

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// fuzzMaxPayload is the decoders' bound in the fuzz targets: small, so the
// fuzzer easily writes lengths on both sides of it.
const fuzzMaxPayload = 4096

// headerBytes encodes h as it would appear on the wire.
func headerBytes(h Header) []byte { return AppendHeader(nil, &h) }

// frameBytes encodes a header, with Length from payload, and the payload.
func frameBytes(h Header, payload []byte) []byte {
	h.Length = uint32(len(payload))
	return append(AppendHeader(nil, &h), payload...)
}

func FuzzDecodeHeader(f *testing.F) {
	// A valid request header.
	f.Add(headerBytes(Header{Type: TypeRequest, Service: NewServiceID(8, 1), Proc: 3, XID: 42, Length: 10}))
	// A valid header followed by bytes of its payload, which must be ignored.
	f.Add(frameBytes(Header{Type: TypeReply, Status: 2}, []byte("payload")))
	// A truncated header: one byte short.
	f.Add(headerBytes(Header{Type: TypeRequest})[:HeaderSize-1])
	// Nothing at all.
	f.Add([]byte{})
	// A length of 0xffffffff: over any bound, must be refused, not trusted.
	f.Add(headerBytes(Header{Type: TypeRequest, Length: math.MaxUint32}))
	// A compressed frame, aux at the bound.
	f.Add(headerBytes(Header{Type: TypeOneWay, Flags: FlagZstd, Length: 100, Aux: fuzzMaxPayload}))
	// A compressed frame whose uncompressed size is over the bound.
	f.Add(headerBytes(Header{Type: TypeOneWay, Flags: FlagS2, Length: 100, Aux: fuzzMaxPayload + 1}))
	// Both compression flags.
	f.Add(headerBytes(Header{Type: TypeRequest, Flags: FlagS2 | FlagZstd, Aux: 1}))
	// A credit grant, and a credit frame wrongly carrying a payload.
	f.Add(headerBytes(Header{Type: TypeCredit, Aux: 1 << 16}))
	f.Add(headerBytes(Header{Type: TypeCredit, Length: 1, Aux: 1}))
	// A compressed hello.
	f.Add(headerBytes(Header{Type: TypeHello, Flags: FlagS2, Length: 30, Aux: 40}))
	// Priority one past the highest.
	f.Add(headerBytes(Header{Type: TypeRequest, Priority: MaxPriority + 1}))
	// A zeroed header, and one of all ones.
	f.Add(make([]byte, HeaderSize))
	f.Add(bytes.Repeat([]byte{0xff}, HeaderSize))

	sentinels := []error{ErrBadVersion, ErrBadType, ErrBadFlags, ErrBadPriority, ErrFrameTooLarge, ErrBadAux}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b, fuzzMaxPayload)
		if len(b) < HeaderSize {
			if err == nil {
				t.Fatalf("DecodeHeader accepted %d bytes", len(b))
			}
			return
		}
		if err != nil {
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %v is none of the sentinels", err)
		}
		// Whatever was accepted obeys every documented rule...
		switch {
		case h.Type == TypeInvalid || h.Type >= typeLimit:
			t.Fatalf("accepted type %d", h.Type)
		case h.Flags&^flagsKnown != 0 || h.Flags&(FlagS2|FlagZstd) == FlagS2|FlagZstd:
			t.Fatalf("accepted flags %#x", uint8(h.Flags))
		case h.Priority > MaxPriority:
			t.Fatalf("accepted priority %d", h.Priority)
		case h.Length > fuzzMaxPayload:
			t.Fatalf("accepted length %d", h.Length)
		case h.Flags.Compressed() && h.Aux > fuzzMaxPayload:
			t.Fatalf("accepted uncompressed size %d", h.Aux)
		case h.Flags.Compressed() && h.Type != TypeRequest && h.Type != TypeOneWay && h.Type != TypeReply:
			t.Fatalf("accepted compressed %s frame", h.Type)
		case h.Type == TypeCredit && (h.Length != 0 || h.Aux == 0):
			t.Fatalf("accepted credit frame with length %d, grant %d", h.Length, h.Aux)
		case h.Flags&(FlagDeadline|FlagCancellable) != 0 && h.Type != TypeRequest:
			t.Fatalf("accepted request flags on a %s frame", h.Type)
		case h.Flags&FlagDeadline == 0 && h.Status != 0 && (h.Type == TypeRequest || h.Type == TypeOneWay || h.Type == TypeCancel || h.Type == TypeDraining):
			t.Fatalf("accepted status %d in a %s frame", h.Status, h.Type)
		case (h.Type == TypeCancel || h.Type == TypeDraining) && (h.Length != 0 || h.Aux != 0):
			t.Fatalf("accepted %s frame with a body", h.Type)
		}
		// ...and encodes back to the same bytes.
		if got := headerBytes(h); !bytes.Equal(got, b[:HeaderSize]) {
			t.Fatalf("re-encoded header %x, decoded from %x", got, b[:HeaderSize])
		}
	})
}

func FuzzDecoder(f *testing.F) {
	// A conversation with every frame type and payload sizes around the
	// edges, including 0-length and >= LargePayload; split at byte 0.
	f.Add(encodeFrames(testStreamFrames()), uint16(0))
	// The same, split inside the first header.
	f.Add(encodeFrames(testStreamFrames()[:8]), uint16(5))
	// One valid frame.
	f.Add(frameBytes(Header{Type: TypeRequest, Proc: 1, XID: 1}, []byte("hello")), uint16(33))
	// Zero-length frames back to back.
	f.Add(bytes.Repeat(frameBytes(Header{Type: TypeGoAway}, nil), 4), uint16(40))
	// A truncated header.
	f.Add(headerBytes(Header{Type: TypeRequest})[:20], uint16(10))
	// A frame whose payload has not all arrived.
	f.Add(frameBytes(Header{Type: TypeReply}, make([]byte, 100))[:HeaderSize+50], uint16(HeaderSize))
	// A length of 0xffffffff: must fail from the header, never wait for 4 GiB.
	f.Add(headerBytes(Header{Type: TypeRequest, Length: math.MaxUint32}), uint16(0))
	// A length one past the bound, and one at it with the payload present.
	f.Add(headerBytes(Header{Type: TypeRequest, Length: fuzzMaxPayload + 1}), uint16(0))
	f.Add(frameBytes(Header{Type: TypeRequest}, make([]byte, fuzzMaxPayload)), uint16(100))
	// A compressed frame.
	f.Add(frameBytes(Header{Type: TypeOneWay, Flags: FlagS2, Aux: 300}, s2.Encode(nil, compressible(300))), uint16(1))
	// A good frame followed by a corrupt header.
	f.Add(append(frameBytes(Header{Type: TypeRequest}, []byte("ok")), make([]byte, HeaderSize)...), uint16(34))
	// Nothing.
	f.Add([]byte{}, uint16(0))

	f.Fuzz(func(t *testing.T, stream []byte, split uint16) {
		d := Decoder{MaxPayload: fuzzMaxPayload}

		// All at once.
		var whole []testFrame
		var wholeErr error
		buf := stream
		for {
			f, n, err := d.Next(buf)
			if err != nil {
				if n != 0 {
					t.Fatalf("Next returned n %d with error %v", n, err)
				}
				wholeErr = err
				break
			}
			need, needErr := d.Need(buf)
			if needErr != nil {
				t.Fatalf("Next accepted what Need refused: %v", needErr)
			}
			if n == 0 {
				if need <= len(buf) {
					t.Fatalf("Next wants more than %d bytes, Need says %d suffice", len(buf), need)
				}
				break
			}
			switch {
			case n > len(buf):
				t.Fatalf("Next took %d bytes of %d", n, len(buf))
			case n != need:
				t.Fatalf("Next took %d bytes, Need says %d", n, need)
			case len(f.Payload) > fuzzMaxPayload:
				t.Fatalf("payload of %d bytes over MaxPayload %d", len(f.Payload), fuzzMaxPayload)
			case n != HeaderSize+len(f.Payload) || int(f.Length) != len(f.Payload):
				t.Fatalf("n %d, payload %d, length %d", n, len(f.Payload), f.Length)
			case len(f.Payload) > 0 && &f.Payload[0] != &buf[HeaderSize]:
				t.Fatal("payload does not alias the input")
			}
			whole = append(whole, testFrame{h: f.Header, payload: f.Payload})
			buf = buf[n:]
		}

		// The same bytes arriving in two reads give the same frames, or
		// the same failure.
		at := 0
		if len(stream) > 0 {
			at = int(split) % (len(stream) + 1)
		}
		var parts []testFrame
		var partsErr error
		in := make([]byte, 0, len(stream))
		for _, chunk := range [][]byte{stream[:at], stream[at:]} {
			in = append(in, chunk...)
			for partsErr == nil {
				f, n, err := d.Next(in)
				if err != nil {
					partsErr = err
					break
				}
				if n == 0 {
					break
				}
				parts = append(parts, testFrame{h: f.Header, payload: bytes.Clone(f.Payload)})
				in = in[n:]
			}
		}
		if (wholeErr == nil) != (partsErr == nil) {
			t.Fatalf("whole stream: %v; split at %d: %v", wholeErr, at, partsErr)
		}
		checkFrames(t, parts, whole)
	})
}

func FuzzDecodeHello(f *testing.F) {
	hello := func(h Hello) []byte {
		b, err := AppendHello(nil, &h)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	valid := hello(Hello{Version: ProtocolVersion, From: 1, To: 2, Channel: 3, Incarnation: 4, Cluster: "cluster", Auth: []byte("auth")})
	// A valid hello.
	f.Add(valid)
	// A valid hello without auth.
	f.Add(hello(Hello{Version: ProtocolVersion, Cluster: "c"}))
	// The longest name and auth blob allowed.
	f.Add(hello(Hello{Version: ProtocolVersion, Cluster: string(bytes.Repeat([]byte{'n'}, MaxClusterName)), Auth: make([]byte, MaxHelloAuth)}))
	// Shorter than the fixed part.
	f.Add(valid[:helloFixed-1])
	// An empty cluster name.
	f.Add(append(bytes.Clone(valid[:19]), 0, 0, 0))
	// A name cut short.
	f.Add(valid[:helloFixed+2])
	// An auth length one more than the bytes present.
	f.Add(valid[:len(valid)-1])
	// An auth length of 0xffff.
	f.Add(append(bytes.Clone(valid[:helloFixed+7]), 0xff, 0xff))

	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := DecodeHello(p)
		if err != nil {
			if !errors.Is(err, ErrBadHello) {
				t.Fatalf("error %v is not ErrBadHello", err)
			}
			return
		}
		if len(h.Cluster) == 0 || len(h.Cluster) > MaxClusterName || len(h.Auth) > MaxHelloAuth {
			t.Fatalf("accepted name of %d bytes, auth of %d", len(h.Cluster), len(h.Auth))
		}
		b, err := AppendHello(nil, &h)
		if err != nil {
			t.Fatalf("decoded hello does not encode: %v", err)
		}
		if !bytes.Equal(b, p) {
			t.Fatalf("re-encoded %x, decoded from %x", b, p)
		}
	})
}

// fuzzCodecLimit is the codec's decode limit in FuzzDecompress.
const fuzzCodecLimit = 4096

func FuzzDecompress(f *testing.F) {
	src := compressible(3000)
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<10))
	if err != nil {
		f.Fatal(err)
	}
	zsrc := zenc.EncodeAll(src, nil)
	// 1 MiB of zeros, compressed with and without the size in the frame.
	zeros := make([]byte, 1<<20)
	bombFCS := zenc.EncodeAll(zeros, nil)
	var stream bytes.Buffer
	zenc.Reset(&stream)
	zenc.Write(zeros)
	zenc.Close()
	bomb := stream.Bytes()
	s2src := s2.Encode(nil, src)

	// Valid s2 and zstd payloads with the right size.
	f.Add(uint8(FlagS2), uint32(len(src)), s2src)
	f.Add(uint8(FlagZstd), uint32(len(src)), zsrc)
	// Valid payloads, size off by one either way.
	f.Add(uint8(FlagS2), uint32(len(src)+1), s2src)
	f.Add(uint8(FlagZstd), uint32(len(src)-1), zsrc)
	// zstd bombs announcing a small size, or the limit.
	f.Add(uint8(FlagZstd), uint32(100), bomb)
	f.Add(uint8(FlagZstd), uint32(fuzzCodecLimit), bomb)
	f.Add(uint8(FlagZstd), uint32(fuzzCodecLimit), bombFCS)
	// An announced size over the limit, and 0xffffffff.
	f.Add(uint8(FlagS2), uint32(fuzzCodecLimit+1), s2src)
	f.Add(uint8(FlagZstd), uint32(math.MaxUint32), zsrc)
	// Both flags, which DecodeHeader would refuse.
	f.Add(uint8(FlagS2|FlagZstd), uint32(len(src)), s2src)
	// Uncompressed, with an unknown flag bit, and over the limit.
	f.Add(uint8(0x80), uint32(0), []byte("plain"))
	f.Add(uint8(0), uint32(0), make([]byte, fuzzCodecLimit+1))
	// Compressed flag, empty payload.
	f.Add(uint8(FlagZstd), uint32(0), []byte{})
	f.Add(uint8(FlagS2), uint32(0), []byte{})
	// Truncated payloads.
	f.Add(uint8(FlagS2), uint32(len(src)), s2src[:len(s2src)/2])
	f.Add(uint8(FlagZstd), uint32(len(src)), zsrc[:len(zsrc)-4])

	c := NewCodec(fuzzCodecLimit)
	f.Cleanup(c.Close)
	// An unlimited reference decoder would be a bomb itself; this one stops
	// well past the codec's limit.
	ref, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<20))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(ref.Close)

	f.Fuzz(func(t *testing.T, flags uint8, aux uint32, payload []byte) {
		h := Header{Type: TypeRequest, Flags: Flags(flags), Length: uint32(len(payload)), Aux: aux}
		prefix := []byte("prefix")
		dst := spareDst(prefix, 2*fuzzCodecLimit)
		out, err := c.Decompress(dst, &h, payload)
		if !bytes.HasPrefix(out, prefix) {
			t.Fatal("Decompress lost dst")
		}
		// Nothing is written past the announced size (the payload's own
		// when uncompressed), nor at all when that is over the limit.
		announced := int(aux)
		if !h.Flags.Compressed() {
			announced = len(payload)
		}
		if announced > fuzzCodecLimit {
			announced = 0
		}
		checkSpare(t, dst, len(prefix)+announced)
		got := out[len(prefix):]
		if len(got) > fuzzCodecLimit {
			t.Fatalf("Decompress returned %d bytes, limit %d", len(got), fuzzCodecLimit)
		}
		if err != nil {
			if len(got) != 0 {
				t.Fatalf("Decompress failed (%v) but returned %d bytes", err, len(got))
			}
			if !errors.Is(err, ErrDecompress) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("error %v is neither ErrDecompress nor ErrFrameTooLarge", err)
			}
			return
		}
		switch {
		case h.Flags&FlagS2 != 0:
			want, err := s2.Decode(nil, payload)
			if err != nil || !bytes.Equal(got, want) || len(got) != int(aux) {
				t.Fatalf("s2: got %d bytes, aux %d; library: %d bytes, %v", len(got), aux, len(want), err)
			}
		case h.Flags&FlagZstd != 0:
			want, err := ref.DecodeAll(payload, nil)
			if err != nil || !bytes.Equal(got, want) || len(got) != int(aux) {
				t.Fatalf("zstd: got %d bytes, aux %d; library: %d bytes, %v", len(got), aux, len(want), err)
			}
		default:
			if !bytes.Equal(got, payload) {
				t.Fatal("uncompressed payload not copied as is")
			}
		}
	})
}

// FuzzS2Length checks the walker Decompress trusts before allocating
// against s2 itself: whatever s2.Decode accepts, s2Length measures the
// same, and whatever s2Length accepts, s2.Decode decodes to that length.
func FuzzS2Length(f *testing.F) {
	for _, src := range [][]byte{nil, []byte("a"), make([]byte, 1<<16), []byte(strings.Repeat("abcdefgh", 999))} {
		f.Add(s2.Encode(nil, src))
		f.Add(s2.EncodeBetter(nil, src))
	}
	f.Fuzz(func(t *testing.T, comp []byte) {
		const limit = 1 << 20
		n, err := s2Length(comp, limit)
		want, derr := s2.DecodedLen(comp)
		var out []byte
		if derr == nil && want <= limit {
			out, derr = s2.Decode(nil, comp)
		}
		switch {
		case derr == nil && want <= limit && (err != nil || n != len(out)):
			t.Fatalf("s2 decodes %d bytes; s2Length says %d, %v", len(out), n, err)
		case err == nil && derr != nil:
			t.Fatalf("s2Length accepts %d bytes that s2 refuses: %v", n, derr)
		}
	})
}

// FuzzTimeout: every 16-bit value decodes to a bounded duration, and
// encoding any duration rounds up, never down, by at most one step of its
// unit, and decodes back to the same encoding.
func FuzzTimeout(f *testing.F) {
	for _, d := range []int64{0, 1, 999, 1000, 16383000, 16384000, int64(time.Hour), math.MaxInt64, -5} {
		f.Add(d, uint16(0))
	}
	f.Add(int64(0), uint16(0xffff))
	f.Fuzz(func(t *testing.T, d int64, v uint16) {
		if got := DecodeTimeout(v); got < 0 || got > timeoutMax*time.Minute {
			t.Fatalf("DecodeTimeout(%#x) = %v", v, got)
		}
		dur := time.Duration(d)
		enc := EncodeTimeout(dur)
		back := DecodeTimeout(enc)
		switch {
		case dur <= 0 && back != 0:
			t.Fatalf("%v encoded as %v", dur, back)
		case dur > 0 && dur <= timeoutMax*time.Minute && (back < dur || back-dur >= timeoutUnits[enc>>timeoutUnitShift]):
			t.Fatalf("%v encoded as %v (%#x)", dur, back, enc)
		case EncodeTimeout(back) != enc:
			t.Fatalf("%v re-encodes as %#x, not %#x", back, EncodeTimeout(back), enc)
		}
	})
}
