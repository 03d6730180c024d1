package framing

// Frame is one decoded frame. Payload aliases the buffer that was decoded:
// it is valid only until that buffer is discarded or reused, so a consumer
// that hands the payload to another goroutine copies it first.
type Frame struct {
	Header
	Payload []byte
}

// Decoder splits a byte stream into frames in place, without copying or
// allocating. The zero value uses DefaultMaxPayload.
type Decoder struct {
	// MaxPayload bounds every length read from the network, checked before
	// a single byte of payload is buffered for it.
	MaxPayload uint32
}

// Next parses the frame at the start of buf. When buf does not yet hold a
// whole frame it returns n == 0 and a nil error: read more and call again.
// On success n is the number of bytes the frame occupies in buf. An error
// means the stream is corrupt and must be abandoned.
func (d *Decoder) Next(buf []byte) (f Frame, n int, err error) {
	if len(buf) < HeaderSize {
		return f, 0, nil
	}
	max := d.MaxPayload
	if max == 0 {
		max = DefaultMaxPayload
	}
	f.Header, err = DecodeHeader(buf[:HeaderSize], max)
	if err != nil {
		return f, 0, err
	}
	end := HeaderSize + int(f.Length)
	if len(buf) < end {
		return f, 0, nil
	}
	f.Payload = buf[HeaderSize:end:end]
	return f, end, nil
}

// Need reports how many bytes the frame starting at buf occupies in total,
// or HeaderSize when the header itself is incomplete. It trusts a header
// only after validating it, so the answer is bounded by MaxPayload.
func (d *Decoder) Need(buf []byte) (int, error) {
	if len(buf) < HeaderSize {
		return HeaderSize, nil
	}
	max := d.MaxPayload
	if max == 0 {
		max = DefaultMaxPayload
	}
	h, err := DecodeHeader(buf[:HeaderSize], max)
	if err != nil {
		return 0, err
	}
	return HeaderSize + int(h.Length), nil
}
