package framing

import (
	"io"
	"net"
)

// LargePayload is the size from which Batch references a payload instead of
// copying it: below it a copy is cheaper than one more iovec.
const LargePayload = 4096

// segment is one iovec of a batch: either buf[off:end] or ext.
type segment struct {
	off, end int
	ext      []byte
}

// Batch accumulates encoded frames for one vectored write (writev).
// Headers and small payloads are copied into one contiguous buffer; large
// payloads are referenced in place, so the caller must keep them unchanged
// until the batch has been written or Own has been called.
//
// A Batch is not safe for concurrent use; the engine guards each
// connection's batch with that connection's write lock.
type Batch struct {
	buf  []byte
	segs []segment
	iov  [][]byte
	size int
}

// Len is the number of bytes waiting to be written.
func (b *Batch) Len() int { return b.size }

// Reset drops every pending byte and keeps the capacity.
func (b *Batch) Reset() {
	b.buf = b.buf[:0]
	b.segs = b.segs[:0]
	clear(b.iov)
	b.iov = b.iov[:0]
	b.size = 0
}

// Append encodes h, with h.Length set from payload, followed by payload.
func (b *Batch) Append(h *Header, payload []byte) {
	h.Length = uint32(len(payload))
	start := len(b.buf)
	b.buf = AppendHeader(b.buf, h)
	if len(payload) < LargePayload {
		b.buf = append(b.buf, payload...)
		b.addOwned(start, len(b.buf))
	} else {
		b.addOwned(start, len(b.buf))
		b.segs = append(b.segs, segment{ext: payload})
	}
	b.size += HeaderSize + len(payload)
}

// AppendCopy is Append that always copies the payload, for a frame whose
// sender will not wait for the batch to be written.
func (b *Batch) AppendCopy(h *Header, payload []byte) {
	h.Length = uint32(len(payload))
	start := len(b.buf)
	b.buf = AppendHeader(b.buf, h)
	b.buf = append(b.buf, payload...)
	b.addOwned(start, len(b.buf))
	b.size += HeaderSize + len(payload)
}

// Extend returns the batch's buffer for a caller that appends encoded bytes
// itself (encryption seals frames straight into it); Commit takes the
// grown buffer back. Nothing else may touch the batch in between.
func (b *Batch) Extend() []byte { return b.buf }

// Commit registers the bytes appended to the buffer Extend returned.
func (b *Batch) Commit(buf []byte) {
	start := len(b.buf)
	b.buf = buf
	if len(buf) > start {
		b.addOwned(start, len(buf))
		b.size += len(buf) - start
	}
}

// AppendRaw appends bytes that are already encoded frames.
func (b *Batch) AppendRaw(p []byte) {
	start := len(b.buf)
	b.buf = append(b.buf, p...)
	b.addOwned(start, len(b.buf))
	b.size += len(p)
}

// addOwned extends the last segment when it is owned and contiguous, so
// back-to-back small frames become a single iovec.
func (b *Batch) addOwned(start, end int) {
	if n := len(b.segs); n > 0 && b.segs[n-1].ext == nil && b.segs[n-1].end == start {
		b.segs[n-1].end = end
		return
	}
	b.segs = append(b.segs, segment{off: start, end: end})
}

// Buffers returns the pending bytes as iovecs for writev. The result is
// valid until the next call on b.
func (b *Batch) Buffers() [][]byte {
	clear(b.iov)
	b.iov = b.iov[:0]
	for _, s := range b.segs {
		if s.ext != nil {
			b.iov = append(b.iov, s.ext)
		} else {
			b.iov = append(b.iov, b.buf[s.off:s.end])
		}
	}
	return b.iov
}

// Consume drops the first n pending bytes, after a write of n bytes.
func (b *Batch) Consume(n int) {
	if n >= b.size {
		b.Reset()
		return
	}
	b.size -= n
	i := 0
	for n > 0 {
		s := &b.segs[i]
		l := s.end - s.off
		if s.ext != nil {
			l = len(s.ext)
		}
		if n < l {
			if s.ext != nil {
				s.ext = s.ext[n:]
			} else {
				s.off += n
			}
			break
		}
		n -= l
		i++
	}
	b.segs = append(b.segs[:0], b.segs[i:]...)
	b.compact()
}

// compact drops the written bytes at the front of buf once they are at
// least half of it, so a batch that is never completely drained (a busy
// connection to a slow peer) does not keep every byte it ever sent.
func (b *Batch) compact() {
	lo := len(b.buf)
	for _, s := range b.segs {
		if s.ext == nil {
			lo = min(lo, s.off)
		}
	}
	if lo == 0 || lo < len(b.buf)/2 {
		return
	}
	b.buf = b.buf[:copy(b.buf, b.buf[lo:])]
	for i := range b.segs {
		if b.segs[i].ext == nil {
			b.segs[i].off -= lo
			b.segs[i].end -= lo
		}
	}
}

// Own copies every referenced payload into the batch's own buffer, so the
// callers that appended them may reuse their memory while the batch waits.
func (b *Batch) Own() {
	for i := range b.segs {
		s := &b.segs[i]
		if s.ext == nil {
			continue
		}
		start := len(b.buf)
		b.buf = append(b.buf, s.ext...)
		*s = segment{off: start, end: len(b.buf)}
	}
}

// WriteTo writes the whole batch to w, using writev when w supports it.
func (b *Batch) WriteTo(w io.Writer) (int64, error) {
	bufs := net.Buffers(b.Buffers())
	n, err := bufs.WriteTo(w)
	b.Consume(int(n))
	return n, err
}
