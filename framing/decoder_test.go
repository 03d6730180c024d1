package framing

import (
	"bytes"
	"errors"
	"testing"
)

// reader models a connection's inbound buffer: bytes arrive in chunks, the
// decoder takes whole frames from the front, and what is left is moved to
// the front before the next read, overwriting bytes that earlier payloads
// aliased (which is why frames are copied out as they are seen).
type reader struct {
	t   testing.TB
	d   Decoder
	buf []byte
	got []testFrame
}

func newReader(t testing.TB, d Decoder, size int) *reader {
	return &reader{t: t, d: d, buf: make([]byte, 0, size)}
}

func (r *reader) feed(p []byte) {
	r.t.Helper()
	r.buf = append(r.buf, p...)
	in := r.buf
	for {
		need, err := r.d.Need(in)
		if err != nil {
			r.t.Fatalf("Need after %d frames: %v", len(r.got), err)
		}
		f, n, err := r.d.Next(in)
		if err != nil {
			r.t.Fatalf("Next after %d frames: %v", len(r.got), err)
		}
		if n == 0 {
			if len(in) >= need {
				r.t.Fatalf("Next wants more with %d bytes buffered; Need said %d", len(in), need)
			}
			break
		}
		if n != need {
			r.t.Fatalf("Next took %d bytes; Need said %d", n, need)
		}
		if n > len(in) || n != HeaderSize+len(f.Payload) || uint32(len(f.Payload)) != f.Length {
			r.t.Fatalf("Next: n %d, payload %d, length %d, buffered %d", n, len(f.Payload), f.Length, len(in))
		}
		// The payload is the bytes in the buffer, not a copy, and its
		// capacity ends with it so an append cannot clobber the next frame.
		if len(f.Payload) > 0 && &f.Payload[0] != &in[HeaderSize] {
			r.t.Fatalf("frame %d: payload does not alias the input buffer", len(r.got))
		}
		if cap(f.Payload) != len(f.Payload) {
			r.t.Fatalf("frame %d: payload cap %d > len %d", len(r.got), cap(f.Payload), len(f.Payload))
		}
		r.got = append(r.got, testFrame{h: f.Header, payload: bytes.Clone(f.Payload)})
		in = in[n:]
	}
	r.buf = r.buf[:copy(r.buf, in)]
}

func TestDecoderSplitEverywhere(t *testing.T) {
	want := testStreamFrames()
	stream := encodeFrames(want)
	for i := 0; i <= len(stream); i++ {
		r := newReader(t, Decoder{}, len(stream))
		r.feed(stream[:i])
		r.feed(stream[i:])
		if len(r.buf) != 0 {
			t.Fatalf("split at %d: %d bytes left over", i, len(r.buf))
		}
		checkFrames(t, r.got, want)
	}
}

func TestDecoderByteByByte(t *testing.T) {
	want := testStreamFrames()
	stream := encodeFrames(want)
	r := newReader(t, Decoder{}, len(stream))
	for i := range stream {
		r.feed(stream[i : i+1])
	}
	if len(r.buf) != 0 {
		t.Fatalf("%d bytes left over", len(r.buf))
	}
	checkFrames(t, r.got, want)
}

// TestDecoderPrefixes checks Next and Need on every prefix of one frame:
// nothing until the header is in, then the total size, then the frame.
func TestDecoderPrefixes(t *testing.T) {
	h := Header{Type: TypeRequest, Proc: 1, XID: 2}
	payload := pattern(1, 100)
	h.Length = uint32(len(payload))
	frame := append(AppendHeader(nil, &h), payload...)
	frame = append(frame, 0xee) // a byte of the next frame must not be taken
	var d Decoder
	for i := 0; i <= len(frame); i++ {
		need, err := d.Need(frame[:i])
		if err != nil {
			t.Fatalf("Need(%d bytes): %v", i, err)
		}
		wantNeed := HeaderSize + len(payload)
		if i < HeaderSize {
			wantNeed = HeaderSize
		}
		if need != wantNeed {
			t.Fatalf("Need(%d bytes) = %d, want %d", i, need, wantNeed)
		}
		f, n, err := d.Next(frame[:i])
		if err != nil {
			t.Fatalf("Next(%d bytes): %v", i, err)
		}
		switch {
		case i < HeaderSize+len(payload):
			if n != 0 || f.Payload != nil {
				t.Fatalf("Next(%d bytes) = n %d, payload %d bytes; want nothing yet", i, n, len(f.Payload))
			}
		default:
			if n != HeaderSize+len(payload) || f.Header != h || !bytes.Equal(f.Payload, payload) {
				t.Fatalf("Next(%d bytes) = n %d, %+v", i, n, f.Header)
			}
		}
	}
}

// TestDecoderMaxPayload checks that the bound is enforced from the header
// alone, before any payload byte has arrived, and that the zero value means
// DefaultMaxPayload.
func TestDecoderMaxPayload(t *testing.T) {
	tests := []struct {
		name   string
		max    uint32
		length uint32
		want   error
	}{
		{"at-max", 1024, 1024, nil},
		{"over-max", 1024, 1025, ErrFrameTooLarge},
		{"zero-value-at-default", 0, DefaultMaxPayload, nil},
		{"zero-value-over-default", 0, DefaultMaxPayload + 1, ErrFrameTooLarge},
		{"huge", 1 << 30, 0xffffffff, ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decoder{MaxPayload: tt.max}
			hdr := AppendHeader(nil, &Header{Type: TypeReply, Length: tt.length})
			f, n, err := d.Next(hdr)
			if !errors.Is(err, tt.want) || n != 0 {
				t.Fatalf("Next(header only) = n %d, %v; want 0, %v", n, err, tt.want)
			}
			if tt.want == nil && f.Length != tt.length {
				t.Fatalf("Next(header only) header length %d, want %d", f.Length, tt.length)
			}
			need, err := d.Need(hdr)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Need = %v, want %v", err, tt.want)
			}
			if tt.want == nil && need != HeaderSize+int(tt.length) {
				t.Fatalf("Need = %d, want %d", need, HeaderSize+int(tt.length))
			}
		})
	}
}

// TestDecoderCorruptMidStream checks that frames before a bad header are
// delivered and the bad header then stops the stream.
func TestDecoderCorruptMidStream(t *testing.T) {
	frames := testStreamFrames()[:3]
	stream := encodeFrames(frames)
	bad := AppendHeader(nil, &Header{Type: TypeRequest})
	bad[0] = ProtocolVersion + 1
	stream = append(stream, bad...)
	var d Decoder
	buf := stream
	for i := range frames {
		f, n, err := d.Next(buf)
		if err != nil || n == 0 || f.Header != frames[i].h {
			t.Fatalf("frame %d: n %d, %v", i, n, err)
		}
		buf = buf[n:]
	}
	// A bad header is an error as soon as all of it is in, not before.
	for i := 0; i < HeaderSize; i++ {
		if _, n, err := d.Next(buf[:i]); n != 0 || err != nil {
			t.Fatalf("Next(%d bytes of bad header) = %d, %v", i, n, err)
		}
	}
	if _, n, err := d.Next(buf); n != 0 || !errors.Is(err, ErrBadVersion) {
		t.Fatalf("Next(bad header) = %d, %v; want 0, %v", n, err, ErrBadVersion)
	}
}

func TestDecoderZeroAllocs(t *testing.T) {
	stream := encodeFrames(testStreamFrames())
	var d Decoder
	frames := 0
	allocs := testing.AllocsPerRun(100, func() {
		frames = 0
		buf := stream
		for {
			if _, err := d.Need(buf); err != nil {
				panic(err)
			}
			_, n, err := d.Next(buf)
			if err != nil {
				panic(err)
			}
			if n == 0 {
				break
			}
			frames++
			buf = buf[n:]
		}
	})
	if frames != len(testStreamFrames()) {
		t.Fatalf("decoded %d frames, want %d", frames, len(testStreamFrames()))
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per stream of %d frames, want 0", allocs, frames)
	}
}

// BenchmarkDecodeNext decodes 64-byte-payload frames, one per op.
func BenchmarkDecodeNext(b *testing.B) {
	const frames = 1024
	h := Header{Type: TypeRequest, Service: NewServiceID(8, 1), Proc: 3}
	payload := pattern(1, 64)
	h.Length = uint32(len(payload))
	var stream []byte
	for i := range frames {
		h.XID = uint64(i)
		stream = append(AppendHeader(stream, &h), payload...)
	}
	var d Decoder
	b.SetBytes(HeaderSize + 64)
	b.ReportAllocs()
	buf := stream
	for b.Loop() {
		f, n, err := d.Next(buf)
		if err != nil || n == 0 || len(f.Payload) != 64 {
			b.Fatalf("Next = %d, %v", n, err)
		}
		buf = buf[n:]
		if len(buf) == 0 {
			buf = stream
		}
	}
}
