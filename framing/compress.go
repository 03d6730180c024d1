package framing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Compression selects a payload compression algorithm.
type Compression uint8

const (
	CompressNone Compression = iota
	CompressS2               // fast, the default choice when compressing at all
	CompressZstd             // denser and slower; for bulky, compressible payloads
)

func (c Compression) String() string {
	switch c {
	case CompressNone:
		return "none"
	case CompressS2:
		return "s2"
	case CompressZstd:
		return "zstd"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// ParseCompression reads "none", "s2" or "zstd".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "none":
		return CompressNone, nil
	case "s2":
		return CompressS2, nil
	case "zstd":
		return CompressZstd, nil
	}
	return 0, fmt.Errorf("framing: unknown compression %q (want none, s2 or zstd)", s)
}

// ErrDecompress is returned for a compressed payload that is corrupt or
// whose decoded size is not the one its header announced.
var ErrDecompress = errors.New("framing: cannot decompress payload")

// ErrCodecClosed is returned for zstd work asked of a Codec after Close.
var ErrCodecClosed = errors.New("framing: codec closed")

// Codec compresses and decompresses payloads. It is safe for concurrent use.
// The zstd coder is built on first use: it costs memory nobody needs until a
// service asks for zstd.
type Codec struct {
	maxDecoded int

	zstdOnce sync.Once
	zstdErr  error
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
}

// NewCodec returns a codec that refuses to decode more than maxDecoded bytes
// for one payload (0 means DefaultMaxPayload).
func NewCodec(maxDecoded int) *Codec {
	if maxDecoded <= 0 {
		maxDecoded = DefaultMaxPayload
	}
	return &Codec{maxDecoded: maxDecoded}
}

func (c *Codec) initZstd() error {
	c.zstdOnce.Do(func() {
		c.zenc, c.zstdErr = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(2))
		if c.zstdErr != nil {
			return
		}
		c.zdec, c.zstdErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(2),
			zstd.WithDecoderMaxMemory(uint64(c.maxDecoded)),
			zstd.WithDecodeAllCapLimit(true))
	})
	return c.zstdErr
}

// Close releases the zstd coder's goroutines, if any were started.
func (c *Codec) Close() {
	// A later initZstd must not start coders after Close, and must fail
	// instead of leaving the coders nil.
	c.zstdOnce.Do(func() { c.zstdErr = ErrCodecClosed })
	if c.zenc != nil {
		c.zenc.Close()
	}
	if c.zdec != nil {
		c.zdec.Close()
	}
}

// Compress appends the compressed form of src to dst and returns it with the
// flag to set in the frame header. When compression would not shrink src it
// returns dst unchanged and no flag, and the caller sends src as is.
func (c *Codec) Compress(dst, src []byte, algo Compression) ([]byte, Flags, error) {
	start := len(dst)
	var flag Flags
	switch algo {
	case CompressNone:
		return dst, 0, nil
	case CompressS2:
		need := s2.MaxEncodedLen(len(src))
		if need < 0 {
			return dst, 0, fmt.Errorf("framing: payload of %d bytes too large for s2", len(src))
		}
		dst = grow(dst, need)
		out := s2.Encode(dst[start:start+need], src)
		dst = dst[:start+len(out)]
		flag = FlagS2
	case CompressZstd:
		if err := c.initZstd(); err != nil {
			return dst, 0, err
		}
		dst = c.zenc.EncodeAll(src, dst)
		flag = FlagZstd
	default:
		return dst, 0, fmt.Errorf("framing: unknown compression %d", algo)
	}
	if len(dst)-start >= len(src) {
		return dst[:start], 0, nil
	}
	return dst, flag, nil
}

// Decompress appends the decoded payload of a frame with header h to dst.
// The decoded size must equal h.Aux, which DecodeHeader already bounded;
// nothing beyond it is ever allocated or written.
func (c *Codec) Decompress(dst []byte, h *Header, payload []byte) ([]byte, error) {
	raw := int(h.Aux)
	if !h.Flags.Compressed() {
		raw = len(payload) // aux means nothing here; the copy is what is bounded
	}
	if raw > c.maxDecoded {
		return dst, fmt.Errorf("%w: announced size %d over limit %d", ErrFrameTooLarge, raw, c.maxDecoded)
	}
	start := len(dst)
	switch {
	case h.Flags&FlagS2 != 0:
		// Walk the block before allocating: its own size field is as
		// cheap to forge as aux, the operations it carries are not.
		n, err := s2Length(payload, raw)
		if err != nil || n != raw {
			return dst, fmt.Errorf("%w: s2 data makes %d bytes, header says %d (%v)", ErrDecompress, n, raw, err)
		}
		dst = grow(dst, raw)
		if _, err := s2.Decode(dst[start:start+raw], payload); err != nil {
			return dst[:start], fmt.Errorf("%w: %v", ErrDecompress, err)
		}
		return dst[:start+raw], nil
	case h.Flags&FlagZstd != 0:
		if max := zstdMaxOutput(len(payload)); raw > max {
			return dst, fmt.Errorf("%w: %d bytes of zstd cannot make the %d the header says (at most %d)", ErrDecompress, len(payload), raw, max)
		}
		if err := c.initZstd(); err != nil {
			return dst, err
		}
		dst = grow(dst, raw)
		out, err := c.zdec.DecodeAll(payload, dst[start:start:start+raw])
		if err != nil || len(out) != raw {
			return dst[:start], fmt.Errorf("%w: zstd gave %d bytes, header says %d (%v)", ErrDecompress, len(out), raw, err)
		}
		return dst[:start+raw], nil
	}
	return append(dst, payload...), nil
}

// grow makes room for n more bytes after len(b) without changing len(b).
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}

// zstdMaxOutput bounds what n bytes of zstd can decode to: a block (3
// bytes of header and at least one of content, an RLE block) makes at most
// 128 KiB, so a frame makes at most that per 4 bytes, plus one block.
// Checking it first means a few bytes announcing megabytes are refused
// before anything is allocated for them.
func zstdMaxOutput(n int) int {
	const maxBlock = 128 << 10
	return (n/4 + 1) * maxBlock
}

var errS2Corrupt = errors.New("corrupt s2 block")

// s2Length walks the operations of an s2 block without decoding it and
// returns the length they produce, stopping with an error past limit or at
// anything s2.Decode would refuse (truncation, an offset before the
// start). It allocates nothing; FuzzS2Length checks it against s2.Decode.
func s2Length(src []byte, limit int) (int, error) {
	announced, k := binary.Uvarint(src)
	// s2 reads the length as a uint32 varint: longer encodings of a small
	// number (0x80 0x80 0x80 0x80 0x80 0x00 is 0) are corrupt to it too.
	if k <= 0 || k > binary.MaxVarintLen32 || announced > uint64(limit) {
		return 0, errS2Corrupt
	}
	s, d, offset := k, 0, 0
	need := func(n int) bool { return n <= len(src)-s }
	for s < len(src) {
		tag := src[s]
		var length int
		switch tag & 0x03 {
		case 0x00: // literal
			x := int(tag >> 2)
			s++
			if x >= 60 {
				w := x - 59 // bytes of length that follow
				if !need(w) {
					return d, errS2Corrupt
				}
				x = 0
				for i := w - 1; i >= 0; i-- {
					x = x<<8 | int(src[s+i])
				}
				s += w
			}
			length = x + 1
			if length <= 0 || !need(length) || length > limit-d {
				return d, errS2Corrupt
			}
			s += length
			d += length
			continue
		case 0x01: // copy with a 1-byte offset; offset 0 repeats the last one
			if !need(2) {
				return d, errS2Corrupt
			}
			toffset := int(uint32(tag)&0xe0<<3 | uint32(src[s+1]))
			length = int(tag) >> 2 & 0x7
			s += 2
			if toffset == 0 {
				switch length {
				case 5:
					if !need(1) {
						return d, errS2Corrupt
					}
					length = int(src[s]) + 4
					s++
				case 6:
					if !need(2) {
						return d, errS2Corrupt
					}
					length = int(binary.LittleEndian.Uint16(src[s:])) + 1<<8
					s += 2
				case 7:
					if !need(3) {
						return d, errS2Corrupt
					}
					length = int(uint32(src[s+2])<<16|uint32(src[s+1])<<8|uint32(src[s])) + 1<<16
					s += 3
				}
			} else {
				offset = toffset
			}
			length += 4
		case 0x02: // copy with a 2-byte offset
			if !need(3) {
				return d, errS2Corrupt
			}
			offset = int(binary.LittleEndian.Uint16(src[s+1:]))
			length = 1 + int(tag)>>2
			s += 3
		case 0x03: // copy with a 4-byte offset
			if !need(5) {
				return d, errS2Corrupt
			}
			offset = int(binary.LittleEndian.Uint32(src[s+1:]))
			length = 1 + int(tag)>>2
			s += 5
		}
		if offset <= 0 || d < offset || length > limit-d {
			return d, errS2Corrupt
		}
		d += length
	}
	if uint64(d) != announced {
		return d, errS2Corrupt
	}
	return d, nil
}
