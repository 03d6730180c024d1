package framing

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// flatten concatenates a batch's iovecs: the bytes a writev would send.
func flatten(bufs [][]byte) []byte {
	var out []byte
	for _, b := range bufs {
		out = append(out, b...)
	}
	return out
}

// appendFrames appends frames to b and returns the payloads it was given,
// which for large frames the batch references.
func appendFrames(b *Batch, frames []testFrame) {
	for i := range frames {
		h := frames[i].h
		h.Length = 0 // Append sets it
		b.Append(&h, frames[i].payload)
		if h.Length != frames[i].h.Length {
			panic(fmt.Sprintf("Append set Length %d, want %d", h.Length, frames[i].h.Length))
		}
	}
}

func TestBatchSmallFramesCoalesce(t *testing.T) {
	var frames []testFrame
	for _, f := range testStreamFrames() {
		if len(f.payload) < LargePayload {
			frames = append(frames, f)
		}
	}
	var b Batch
	appendFrames(&b, frames)
	raw := encodeFrames(testStreamFrames()[:2])
	b.AppendRaw(raw)
	want := append(encodeFrames(frames), raw...)

	bufs := b.Buffers()
	if len(bufs) != 1 {
		t.Fatalf("%d small frames gave %d iovecs, want 1", len(frames)+2, len(bufs))
	}
	if !bytes.Equal(bufs[0], want) {
		t.Fatalf("batch bytes differ from the reference encoding")
	}
	if b.Len() != len(want) {
		t.Fatalf("Len() = %d, want %d", b.Len(), len(want))
	}
}

func TestBatchLargePayloadReferenced(t *testing.T) {
	small := pattern(1, 10)
	large := pattern(2, LargePayload)
	var b Batch
	h1 := Header{Type: TypeRequest, XID: 1}
	h2 := Header{Type: TypeRequest, XID: 2}
	h3 := Header{Type: TypeRequest, XID: 3}
	b.Append(&h1, small)
	b.Append(&h2, large)
	b.Append(&h3, small)
	want := encodeFrames([]testFrame{{h1, small}, {h2, large}, {h3, small}})

	bufs := b.Buffers()
	// [h1 small h2] [large] [h3 small]
	if len(bufs) != 3 {
		t.Fatalf("got %d iovecs, want 3", len(bufs))
	}
	if len(bufs[0]) != 2*HeaderSize+len(small) || len(bufs[1]) != len(large) || len(bufs[2]) != HeaderSize+len(small) {
		t.Fatalf("iovec sizes %d %d %d", len(bufs[0]), len(bufs[1]), len(bufs[2]))
	}
	if &bufs[1][0] != &large[0] {
		t.Fatal("large payload was copied, want referenced")
	}
	if got := flatten(bufs); !bytes.Equal(got, want) {
		t.Fatal("batch bytes differ from the reference encoding")
	}
	// The batch sees what the caller does to a referenced payload...
	large[0]++
	if got := flatten(b.Buffers()); got[2*HeaderSize+len(small)] != large[0] {
		t.Fatal("change to a referenced payload not visible in the batch")
	}
	large[0]--

	// ...until Own, after which the caller may reuse its memory.
	b.Own()
	bufs = b.Buffers()
	if got := flatten(bufs); !bytes.Equal(got, want) {
		t.Fatal("batch bytes changed by Own")
	}
	for i := range large {
		large[i] = 0xaa
	}
	if got := flatten(b.Buffers()); !bytes.Equal(got, want) {
		t.Fatal("batch still aliases the payload after Own")
	}
	if b.Len() != len(want) {
		t.Fatalf("Len() = %d, want %d", b.Len(), len(want))
	}
	// Own is idempotent and later appends still land after the owned bytes.
	b.Own()
	h4 := Header{Type: TypeOneWay}
	b.Append(&h4, small)
	want = append(want, encodeFrames([]testFrame{{h4, small}})...)
	if got := flatten(b.Buffers()); !bytes.Equal(got, want) {
		t.Fatal("append after Own: batch bytes differ from the reference")
	}
}

// batchBuilders are batch shapes for the Consume tests, with iovec
// boundaries between owned and referenced bytes in every order, and the
// bytes each must hold, encoded without Batch. The payloads are made once:
// the tests rebuild batches thousands of times.
var batchBuilders = func() []struct {
	name  string
	build func(*Batch)
	want  []byte
} {
	stream := testStreamFrames()
	p := [][]byte{pattern(20, LargePayload), pattern(21, LargePayload+1), pattern(22, 50), pattern(23, 5), pattern(24, LargePayload+100), pattern(25, 7)}
	h := Header{Type: TypeReply}
	frame := func(p []byte) []byte {
		h := h
		h.Length = uint32(len(p))
		return append(AppendHeader(nil, &h), p...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return []struct {
		name  string
		build func(*Batch)
		want  []byte
	}{
		{"stream", func(b *Batch) { appendFrames(b, stream) }, encodeFrames(stream)},
		{"large-large-raw", func(b *Batch) {
			h := h
			b.Append(&h, p[0])
			b.Append(&h, p[1])
			b.AppendRaw(p[2])
			b.Append(&h, nil)
		}, cat(frame(p[0]), frame(p[1]), p[2], frame(nil))},
		{"owned-after-large", func(b *Batch) {
			h := h
			b.Append(&h, p[3])
			b.Append(&h, p[4])
			b.Own()
			b.Append(&h, p[5])
		}, cat(frame(p[3]), frame(p[4]), frame(p[5]))},
	}
}()

// TestBatchConsumeEveryOffset consumes every possible prefix, as a short
// write would, and checks that exactly the rest remains.
func TestBatchConsumeEveryOffset(t *testing.T) {
	for _, bb := range batchBuilders {
		t.Run(bb.name, func(t *testing.T) {
			want := bb.want
			tail := []testFrame{{h: Header{Type: TypeOneWay, Length: 3}, payload: []byte("end")}}
			tailBytes := encodeFrames(tail)

			var b, b2 Batch
			for i := 0; i <= len(want); i++ {
				b.Reset()
				bb.build(&b)
				b.Consume(i)
				if d := batchDiff(&b, want[i:]); d != "" {
					t.Fatalf("Consume(%d): %s", i, d)
				}

				// A second short write, at a few interesting distances.
				for _, j := range []int{1, HeaderSize - 1, HeaderSize, LargePayload} {
					if i+j >= len(want) {
						continue
					}
					b2.Reset()
					bb.build(&b2)
					b2.Consume(i)
					b2.Consume(j)
					if d := batchDiff(&b2, want[i+j:]); d != "" {
						t.Fatalf("Consume(%d)+Consume(%d): %s", i, j, d)
					}
				}

				// Frames appended after a partial write go after what is left,
				// whether or not the rest is owned first.
				b.Append(&Header{Type: TypeOneWay}, tail[0].payload)
				if d := batchDiff(&b, want[i:], tailBytes); d != "" {
					t.Fatalf("Consume(%d)+Append: %s", i, d)
				}
				b.Own()
				if d := batchDiff(&b, want[i:], tailBytes); d != "" {
					t.Fatalf("Consume(%d)+Append+Own: %s", i, d)
				}
			}
		})
	}
}

// batchDiff says how b differs from the concatenation of want, or returns
// "" when it holds exactly those bytes, without empty iovecs. It walks both
// sides instead of flattening them: the Consume tests call it tens of
// thousands of times.
func batchDiff(b *Batch, want ...[]byte) string {
	total := 0
	for _, w := range want {
		total += len(w)
	}
	if b.Len() != total {
		return fmt.Sprintf("Len() = %d, want %d", b.Len(), total)
	}
	bufs := b.Buffers()
	seen := 0
	var w []byte
	for k, v := range bufs {
		if len(v) == 0 {
			return fmt.Sprintf("empty iovec %d of %d", k, len(bufs))
		}
		for len(v) > 0 {
			for len(w) == 0 {
				if len(want) == 0 {
					return fmt.Sprintf("iovecs hold more than the %d bytes expected", total)
				}
				w, want = want[0], want[1:]
			}
			n := min(len(v), len(w))
			if !bytes.Equal(v[:n], w[:n]) {
				return fmt.Sprintf("iovec %d differs from the expected bytes at offset %d", k, seen)
			}
			v, w, seen = v[n:], w[n:], seen+n
		}
	}
	if seen != total {
		return fmt.Sprintf("iovecs hold %d bytes, want %d", seen, total)
	}
	return ""
}

func TestBatchConsumeAllResets(t *testing.T) {
	var b Batch
	appendFrames(&b, testStreamFrames())
	b.Consume(b.Len() + 100)
	if b.Len() != 0 || len(b.Buffers()) != 0 {
		t.Fatalf("after consuming everything: Len %d, %d iovecs", b.Len(), len(b.Buffers()))
	}
}

// errShort is what shortWriter says when it stops early, like EAGAIN.
var errShort = errors.New("short write")

// shortWriter accepts at most limit bytes per WriteTo round.
type shortWriter struct {
	out   bytes.Buffer
	limit int
	left  int
}

func (w *shortWriter) Write(p []byte) (int, error) {
	n := min(len(p), w.left)
	w.out.Write(p[:n])
	w.left -= n
	if n < len(p) {
		return n, errShort
	}
	return n, nil
}

// TestBatchWriteToShortWrites drains a batch through a writer that takes a
// few bytes at a time, checking that the bytes come out once, in order.
func TestBatchWriteToShortWrites(t *testing.T) {
	want := encodeFrames(testStreamFrames())
	for _, limit := range []int{1, 7, HeaderSize, 1000, LargePayload, LargePayload + 1} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			var b Batch
			appendFrames(&b, testStreamFrames())
			w := &shortWriter{limit: limit}
			for rounds := 0; b.Len() > 0; rounds++ {
				if rounds > len(want) {
					t.Fatal("no progress")
				}
				before := b.Len()
				w.left = limit
				n, err := b.WriteTo(w)
				if err != nil && !errors.Is(err, errShort) {
					t.Fatalf("WriteTo: %v", err)
				}
				if int(n) != min(limit, before) || b.Len() != before-int(n) {
					t.Fatalf("WriteTo wrote %d of %d with limit %d, Len now %d", n, before, limit, b.Len())
				}
			}
			if !bytes.Equal(w.out.Bytes(), want) {
				t.Fatal("bytes written differ from the reference encoding")
			}
		})
	}
}

func TestBatchWriteToDecodes(t *testing.T) {
	frames := testStreamFrames()
	var b Batch
	var out bytes.Buffer
	// Twice, to check the batch is reusable after a full write.
	for round := range 2 {
		appendFrames(&b, frames)
		size := b.Len()
		n, err := b.WriteTo(&out)
		if err != nil || int(n) != size {
			t.Fatalf("round %d: WriteTo = %d, %v; want %d", round, n, err, size)
		}
		if b.Len() != 0 || len(b.Buffers()) != 0 {
			t.Fatalf("round %d: %d bytes, %d iovecs left after WriteTo", round, b.Len(), len(b.Buffers()))
		}
	}
	got := decodeAll(t, &Decoder{}, out.Bytes())
	checkFrames(t, got, append(frames, frames...))
}

// TestBatchSteadyStateNoAllocs checks that a batch reused with Reset, as the
// engine does per connection, stops allocating once it has grown.
func TestBatchSteadyStateNoAllocs(t *testing.T) {
	frames := testStreamFrames()
	var b Batch
	appendFrames(&b, frames)
	b.Buffers()
	h := Header{Type: TypeRequest}
	allocs := testing.AllocsPerRun(100, func() {
		b.Reset()
		for i := range frames {
			b.Append(&h, frames[i].payload)
		}
		b.Buffers()
		b.Consume(HeaderSize + 1)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per reuse, want 0", allocs)
	}
}

func BenchmarkBatchAppend(b *testing.B) {
	for _, size := range []int{64, LargePayload} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			payload := pattern(1, size)
			h := Header{Type: TypeRequest, Service: NewServiceID(8, 1), Proc: 3}
			var batch Batch
			b.SetBytes(int64(HeaderSize + size))
			b.ReportAllocs()
			for b.Loop() {
				batch.Append(&h, payload)
				if batch.Len() >= 1<<20 {
					batch.Reset()
				}
			}
		})
	}
}

// TestBatchNeverDrainedStaysBounded keeps a batch busy the way a connection
// to a slow peer does: frames are appended while earlier ones are written
// in part, so the batch is never empty. Its buffer must stay proportional
// to what is pending, not grow with everything ever sent.
func TestBatchNeverDrainedStaysBounded(t *testing.T) {
	var b Batch
	small := pattern(1, 100)
	large := pattern(2, LargePayload)
	h := Header{Type: TypeOneWay}
	var sent, want bytes.Buffer
	for i := range 20000 {
		b.Append(&h, small)
		want.Write(frameBytes(h, small))
		if i%50 == 0 {
			b.Append(&h, large)
			want.Write(frameBytes(h, large))
			if i%100 == 0 {
				b.Own()
			}
		}
		// Write all but a few bytes.
		w := &shortWriter{left: b.Len() - 7}
		if _, err := b.WriteTo(w); err != nil && !errors.Is(err, errShort) {
			t.Fatal(err)
		}
		sent.Write(w.out.Bytes())
		if b.Len() != 7 {
			t.Fatalf("round %d: %d bytes pending, want 7", i, b.Len())
		}
		if cap(b.buf) > 64<<10 {
			t.Fatalf("round %d: buffer of %d bytes for %d pending", i, cap(b.buf), b.Len())
		}
	}
	b.WriteTo(&sent)
	if !bytes.Equal(sent.Bytes(), want.Bytes()) {
		t.Fatal("bytes written differ from the frames appended")
	}
}
