package framing

import (
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
		n, err := s2.DecodedLen(payload)
		if err != nil || n != raw {
			return dst, fmt.Errorf("%w: s2 size %d, header says %d (%v)", ErrDecompress, n, raw, err)
		}
		dst = grow(dst, raw)
		if _, err := s2.Decode(dst[start:start+raw], payload); err != nil {
			return dst[:start], fmt.Errorf("%w: %v", ErrDecompress, err)
		}
		return dst[:start+raw], nil
	case h.Flags&FlagZstd != 0:
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
