package stub

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/clusterinfra/ci/engine"
)

// Decoding errors. Decoders return them bare; the generated stubs wrap
// them with ArgsError or ResultsError, which name the service and method
// and add engine.ErrCantDecodeArgs or engine.ErrCantDecodeRes.
var (
	ErrTruncated = errors.New("stub: input truncated")
	ErrLength    = errors.New("stub: length larger than the input left")
	ErrVarint    = errors.New("stub: malformed length")
	ErrBool      = errors.New("stub: bool that is not 0 or 1")
	ErrRange     = errors.New("stub: integer out of range")
	ErrDupKey    = errors.New("stub: duplicate map key")
	ErrTrailing  = errors.New("stub: bytes after the last value")
	ErrStatus    = errors.New("stub: unknown reply status")
)

// ArgsError is a server's failure to decode method's arguments: it wraps
// both engine.ErrCantDecodeArgs, which the engine maps to the reply
// status callers see, and err.
func ArgsError(service, method string, err error) error {
	return fmt.Errorf("%w: %s.%s: %w", engine.ErrCantDecodeArgs, service, method, err)
}

// ResultsError is a client's failure to decode method's reply: it wraps
// both engine.ErrCantDecodeRes and err.
func ResultsError(service, method string, err error) error {
	return fmt.Errorf("%w: %s.%s: %w", engine.ErrCantDecodeRes, service, method, err)
}

// maxPooled is the largest buffer a BufPool keeps: one call with huge
// arguments must not pin that memory for ever.
const maxPooled = 64 << 10

// Bufs are one call's argument and reply buffers.
type Bufs struct{ Args, Reply []byte }

// BufPool lends Bufs to a generated client, so that a call allocates only
// for the results it returns. The zero value is ready to use; each
// service has its own, so that one service's large messages do not hand
// large buffers to another's small ones.
type BufPool struct{ p sync.Pool }

// Get returns buffers for one call, empty but perhaps with capacity.
func (p *BufPool) Get() *Bufs {
	if b, ok := p.p.Get().(*Bufs); ok {
		return b
	}
	return new(Bufs)
}

// Put returns b to the pool, without buffers that grew past 64 KiB.
func (p *BufPool) Put(b *Bufs) {
	if cap(b.Args) > maxPooled {
		b.Args = nil
	}
	if cap(b.Reply) > maxPooled {
		b.Reply = nil
	}
	p.p.Put(b)
}

// Fail answers a handler's error: one of the service's declared errors
// (errs, from its //icsgen:errors line) travels in the reply body as
// status i+1 and the error's message, and Fail returns nil; any other
// error is returned, to go back through the engine as an
// *engine.RemoteError.
func Fail(resp *engine.Response, errs []error, err error) error {
	for i, sentinel := range errs {
		if errors.Is(err, sentinel) {
			resp.Body = append(resp.Body[:0], byte(i+1))
			resp.Body = AppendString(resp.Body, err.Error())
			return nil
		}
	}
	return err
}

// RemoteError is a declared error as a caller receives it: the engine's
// own *engine.RemoteError, with Code engine.StatusFailed and Declared the
// declared sentinel, so errors.As with either name matches it, errors.Is
// matches both the sentinel and engine.ErrFailed, and engine.Code gives
// engine.StatusFailed. Its message is the one the server's error had.
type RemoteError = engine.RemoteError

// ReplyBody checks a reply's status byte and returns the results after
// it. A status i+1 with a well-formed message is the i-th of errs as a
// *RemoteError; anything else is an error wrapping engine.ErrCantDecodeRes.
func ReplyBody(service string, errs []error, d []byte) ([]byte, error) {
	if len(d) == 0 {
		return nil, ResultsError(service, "reply", ErrTruncated)
	}
	if d[0] == 0 {
		return d[1:], nil
	}
	if i := int(d[0]) - 1; i < len(errs) {
		if msg, rest, err := String(d[1:]); err == nil && len(rest) == 0 {
			return nil, &engine.RemoteError{Code: engine.StatusFailed, Message: msg, Declared: errs[i]}
		}
	}
	return nil, ResultsError(service, "reply", ErrStatus)
}

// AppendLen appends the length or count n as a uvarint: the prefix of
// strings, byte slices, slices and maps.
func AppendLen(b []byte, n int) []byte { return binary.AppendUvarint(b, uint64(n)) }

// DecLen reads a count of items, each at least size (>= 1) bytes long, and
// refuses one that the input left could not hold: nothing is allocated for
// it. A uvarint that overflows or is not in its shortest form is refused,
// so that each count has one encoding.
func DecLen(d []byte, size int) (int, []byte, error) {
	n, k := binary.Uvarint(d)
	switch {
	case k == 0:
		return 0, nil, ErrTruncated
	case k < 0 || (k > 1 && d[k-1] == 0): // overflow, or not the shortest encoding
		return 0, nil, ErrVarint
	}
	d = d[k:]
	if n > uint64(len(d)/size) {
		return 0, nil, ErrLength
	}
	return int(n), d, nil
}

// AppendBool appends v as one byte, 1 or 0.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// Bool decodes a bool; a byte other than 0 or 1 is ErrBool.
func Bool(d []byte) (bool, []byte, error) {
	if len(d) < 1 {
		return false, nil, ErrTruncated
	}
	if d[0] > 1 {
		return false, nil, ErrBool
	}
	return d[0] == 1, d[1:], nil
}

func AppendInt8(b []byte, v int8) []byte { return append(b, byte(v)) }

func Int8(d []byte) (int8, []byte, error) {
	if len(d) < 1 {
		return 0, nil, ErrTruncated
	}
	return int8(d[0]), d[1:], nil
}

func AppendUint8(b []byte, v uint8) []byte { return append(b, v) }

func Uint8(d []byte) (uint8, []byte, error) {
	if len(d) < 1 {
		return 0, nil, ErrTruncated
	}
	return d[0], d[1:], nil
}

func AppendInt16(b []byte, v int16) []byte { return binary.LittleEndian.AppendUint16(b, uint16(v)) }

func Int16(d []byte) (int16, []byte, error) {
	if len(d) < 2 {
		return 0, nil, ErrTruncated
	}
	return int16(binary.LittleEndian.Uint16(d)), d[2:], nil
}

func AppendUint16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }

func Uint16(d []byte) (uint16, []byte, error) {
	if len(d) < 2 {
		return 0, nil, ErrTruncated
	}
	return binary.LittleEndian.Uint16(d), d[2:], nil
}

func AppendInt32(b []byte, v int32) []byte { return binary.LittleEndian.AppendUint32(b, uint32(v)) }

func Int32(d []byte) (int32, []byte, error) {
	if len(d) < 4 {
		return 0, nil, ErrTruncated
	}
	return int32(binary.LittleEndian.Uint32(d)), d[4:], nil
}

func AppendUint32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }

func Uint32(d []byte) (uint32, []byte, error) {
	if len(d) < 4 {
		return 0, nil, ErrTruncated
	}
	return binary.LittleEndian.Uint32(d), d[4:], nil
}

func AppendInt64(b []byte, v int64) []byte { return binary.LittleEndian.AppendUint64(b, uint64(v)) }

func Int64(d []byte) (int64, []byte, error) {
	if len(d) < 8 {
		return 0, nil, ErrTruncated
	}
	return int64(binary.LittleEndian.Uint64(d)), d[8:], nil
}

func AppendUint64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

func Uint64(d []byte) (uint64, []byte, error) {
	if len(d) < 8 {
		return 0, nil, ErrTruncated
	}
	return binary.LittleEndian.Uint64(d), d[8:], nil
}

// AppendInt appends v as 8 bytes, like an int64, whatever the platform.
func AppendInt(b []byte, v int) []byte { return binary.LittleEndian.AppendUint64(b, uint64(v)) }

// Int decodes an int sent as 8 bytes; on a 32-bit platform a value that
// does not fit is ErrRange rather than silently truncated.
func Int(d []byte) (int, []byte, error) {
	if len(d) < 8 {
		return 0, nil, ErrTruncated
	}
	x := int64(binary.LittleEndian.Uint64(d))
	if int64(int(x)) != x { // a 32-bit platform
		return 0, nil, ErrRange
	}
	return int(x), d[8:], nil
}

// AppendUint appends v as 8 bytes, like a uint64, whatever the platform.
func AppendUint(b []byte, v uint) []byte { return binary.LittleEndian.AppendUint64(b, uint64(v)) }

// Uint decodes a uint sent as 8 bytes; see Int.
func Uint(d []byte) (uint, []byte, error) {
	if len(d) < 8 {
		return 0, nil, ErrTruncated
	}
	x := binary.LittleEndian.Uint64(d)
	if uint64(uint(x)) != x { // a 32-bit platform
		return 0, nil, ErrRange
	}
	return uint(x), d[8:], nil
}

// AppendFloat32 appends v's IEEE 754 bits, little-endian.
func AppendFloat32(b []byte, v float32) []byte {
	return binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
}

func Float32(d []byte) (float32, []byte, error) {
	if len(d) < 4 {
		return 0, nil, ErrTruncated
	}
	return math.Float32frombits(binary.LittleEndian.Uint32(d)), d[4:], nil
}

// AppendFloat64 appends v's IEEE 754 bits, little-endian.
func AppendFloat64(b []byte, v float64) []byte {
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
}

func Float64(d []byte) (float64, []byte, error) {
	if len(d) < 8 {
		return 0, nil, ErrTruncated
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(d)), d[8:], nil
}

// AppendString appends v's length as a uvarint, then its bytes.
func AppendString(b []byte, v string) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// String decodes a string, copying it out of d.
func String(d []byte) (string, []byte, error) {
	n, d, err := DecLen(d, 1)
	if err != nil {
		return "", nil, err
	}
	return string(d[:n]), d[n:], nil
}

// AppendBytes appends v's length as a uvarint, then its bytes.
func AppendBytes(b []byte, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// Bytes decodes a byte slice. It copies: the input is a pooled or network
// buffer. An empty slice decodes as nil, like the generated slice codecs.
func Bytes(d []byte) ([]byte, []byte, error) {
	n, d, err := DecLen(d, 1)
	if err != nil || n == 0 {
		return nil, d, err
	}
	return append([]byte(nil), d[:n]...), d[n:], nil
}
