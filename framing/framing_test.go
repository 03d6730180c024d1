package framing

import (
	"bytes"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind, such as a
// zstd coder whose Codec was never closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testFrame is a frame as a test expects to see it decoded: Length matches
// the payload.
type testFrame struct {
	h       Header
	payload []byte
}

// pattern returns n bytes that differ from frame to frame, so a decoder that
// returned the wrong slice could not pass by accident.
func pattern(seed, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(seed*31 + i*7 + i>>8)
	}
	return p
}

// testStreamFrames is a conversation with every frame type and payload
// sizes around the interesting edges: empty, shorter and longer than a
// header, and just below, at and above LargePayload.
func testStreamFrames() []testFrame {
	svc := NewServiceID(8, 1)
	frames := []testFrame{
		{h: Header{Type: TypeHello, Service: svc}, payload: pattern(1, 40)},
		{h: Header{Type: TypeHelloAck, Service: svc}, payload: pattern(2, 41)},
		{h: Header{Type: TypeRequest, Priority: 1, Service: svc, Proc: 3, XID: 1 | 7<<32, SvcVersion: 2}, payload: pattern(3, 0)},
		{h: Header{Type: TypeRequest, Priority: 2, Service: svc, Proc: 4, XID: 2}, payload: pattern(4, 1)},
		{h: Header{Type: TypeOneWay, Priority: 3, Service: svc, Proc: 5}, payload: pattern(5, HeaderSize-1)},
		{h: Header{Type: TypeReply, Priority: 4, Service: svc, Proc: 3, XID: 1 | 7<<32, Status: 9}, payload: pattern(6, HeaderSize)},
		{h: Header{Type: TypeCredit, Aux: 65536}},
		{h: Header{Type: TypeRequest, Flags: FlagS2, Service: svc, Proc: 6, XID: 3, Aux: 100}, payload: pattern(7, HeaderSize+1)},
		{h: Header{Type: TypeRequest, Service: svc, Proc: 7, XID: 4}, payload: pattern(8, 64)},
		{h: Header{Type: TypeOneWay, Flags: FlagZstd, Service: svc, Aux: 9000}, payload: pattern(9, LargePayload-1)},
		{h: Header{Type: TypeReply, Service: svc, XID: 4}, payload: pattern(10, LargePayload)},
		{h: Header{Type: TypeRequest, Service: svc, XID: 5}, payload: pattern(11, 0)},
		{h: Header{Type: TypeReply, Service: svc, XID: 5}, payload: pattern(12, LargePayload+903)},
		{h: Header{Type: TypeCredit, Aux: 1}},
		{h: Header{Type: TypeOneWay, Service: svc}, payload: pattern(13, 3)},
		{h: Header{Type: TypeGoAway}},
	}
	for i := range frames {
		frames[i].h.Length = uint32(len(frames[i].payload))
	}
	return frames
}

// encodeFrames is the reference encoder: a header followed by its payload,
// frame after frame, built without Batch.
func encodeFrames(frames []testFrame) []byte {
	var b []byte
	for i := range frames {
		b = AppendHeader(b, &frames[i].h)
		b = append(b, frames[i].payload...)
	}
	return b
}

// decodeAll decodes a whole stream, copying the payloads out, and fails the
// test if anything is left over or the stream is corrupt.
func decodeAll(t testing.TB, d *Decoder, buf []byte) []testFrame {
	t.Helper()
	var got []testFrame
	for len(buf) > 0 {
		f, n, err := d.Next(buf)
		if err != nil {
			t.Fatalf("Next after %d frames: %v", len(got), err)
		}
		if n == 0 {
			t.Fatalf("Next after %d frames: %d bytes left that do not make a frame", len(got), len(buf))
		}
		got = append(got, testFrame{h: f.Header, payload: bytes.Clone(f.Payload)})
		buf = buf[n:]
	}
	return got
}

// checkFrames compares decoded frames with the expected ones.
func checkFrames(t testing.TB, got, want []testFrame) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].h != want[i].h {
			t.Fatalf("frame %d: header\n got %+v\nwant %+v", i, got[i].h, want[i].h)
		}
		if !bytes.Equal(got[i].payload, want[i].payload) {
			t.Fatalf("frame %d (%s): payload of %d bytes differs from the %d sent", i, want[i].h.Type, len(got[i].payload), len(want[i].payload))
		}
	}
}
