package framing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// ProtocolVersion is the wire version carried in byte 0 of every frame
// header and in the handshake. Bump it on any incompatible change to the
// header layout or to the meaning of an existing frame type.
//
// Version 2 added the caller's timeout in requests (FlagDeadline, the
// status field), FlagCancellable and TypeCancel (issue 9), and
// FlagDraining and TypeDraining for graceful shutdown.
//
// Version 3 sends a reply back on its request's own connection, where it
// once went on a reply channel (4 or 5) the replier dialled: a version-2
// node would wait for replies on a connection a version-3 node never
// dials, so the two must refuse each other at the handshake.
const ProtocolVersion = 3

// HeaderSize is the fixed size of a frame header in bytes.
//
// All multi-byte fields are little-endian. Layout:
//
//	off size field
//	  0    1 version     ProtocolVersion; HandshakeVersion in handshake frames, for ever
//	  1    1 type        a Type below
//	  2    1 flags       Flags: compression algorithm bits
//	  3    1 priority    ICS priority 0..MaxPriority the frame was sent at
//	  4    4 service     cluster service: channel<<16 | subservice (CI's ICS_NSC_SVC)
//	  8    4 proc        procedure number; echoed in the reply
//	 12    8 xid         transaction id, opaque to the receiver (the engine: slot | random generation<<24); 0 for one-way
//	 20    4 length      payload bytes that follow the header on the wire
//	 24    4 aux         uncompressed length when compressed; credit bytes for TypeCredit
//	 28    2 svcversion  version of the service stubs that built the frame
//	 30    2 status      reply status (a CLUSTER_RPC_* code); in a request with
//	                     FlagDeadline, the caller's time left (EncodeTimeout); 0 in
//	                     other requests, one-way, cancel and draining frames
const HeaderSize = 32

// MaxPriority is the highest ICS priority. Priority 0 uses the service's own
// (throttled) channel; 1..MaxPriority use the matching priority channel.
const MaxPriority = 4

// DefaultMaxPayload bounds the payload length, compressed or not, that a
// decoder accepts before it would allocate anything for it.
const DefaultMaxPayload = 16 << 20

// Type says what a frame carries. The list is only appended to: a number,
// once used, keeps its meaning for ever.
type Type uint8

const (
	TypeInvalid  Type = 0 // never sent; a zeroed header is an error
	TypeHello    Type = 1 // dialler's handshake; payload: encoded Hello
	TypeHelloAck Type = 2 // acceptor's answer; payload: encoded Hello of the acceptor
	TypeRequest  Type = 3 // RPC request; payload: arguments; expects TypeReply with the same xid
	TypeOneWay   Type = 4 // one-way message; payload: arguments; no reply, xid 0
	TypeReply    Type = 5 // RPC reply; payload: results; status says success or which error
	TypeCredit   Type = 6 // flow-control grant; aux: bytes of credit returned to the sender; no payload
	TypeGoAway   Type = 7 // sender is closing this connection on purpose; no payload
	TypeConfirm  Type = 8 // dialler's third handshake message; payload: proof it holds the session keys
	TypeRefuse   Type = 9 // acceptor's answer to a hello it will not take; payload: encoded Refusal; then it closes
	// TypeCancel says the caller gave up the request with the same xid,
	// sent on the connection the request went on (so it never overtakes
	// it): the server cancels the handler's ctx and drops its reply. No
	// payload.
	TypeCancel Type = 10
	// TypeDraining goes from an acceptor back to the dialler: this node is
	// shutting down and takes no new requests; calls to it fail fast. No
	// payload.
	TypeDraining Type = 11
	typeLimit    Type = 12 // first unused number; keep last
)

var typeNames = [...]string{"invalid", "hello", "hello-ack", "request", "oneway", "reply", "credit", "goaway", "confirm", "refuse", "cancel", "draining"}

func (t Type) String() string {
	if t < typeLimit {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Flags are per-frame bits.
type Flags uint8

const (
	// FlagS2 marks a payload compressed with S2; aux holds the raw length.
	FlagS2 Flags = 1 << 0
	// FlagZstd marks a payload compressed with zstd; aux holds the raw length.
	FlagZstd Flags = 1 << 1

	// FlagStarved marks the first frame a sender sent after waiting for
	// credit: the receiver may widen a window that is holding a fast
	// handler back.
	FlagStarved Flags = 1 << 2

	// FlagDeadline marks a request whose status field
	// holds the caller's time left (EncodeTimeout): the handler's ctx gets
	// that deadline. A duration, not a time, so the nodes' clocks need not
	// agree.
	FlagDeadline Flags = 1 << 3

	// FlagCancellable marks a request whose caller may give it up before
	// its reply (its ctx can end): the server keeps the means to cancel
	// the handler when a TypeCancel for its xid arrives. Requests without
	// it cost the server nothing of the kind.
	FlagCancellable Flags = 1 << 4

	flagCompressionMask = FlagS2 | FlagZstd
	flagRequestOnly     = FlagDeadline | FlagCancellable
	flagsKnown          = flagCompressionMask | FlagStarved | flagRequestOnly
)

// Compressed reports whether the payload is compressed.
func (f Flags) Compressed() bool { return f&flagCompressionMask != 0 }

// ServiceID names a cluster service as CI did: channel<<16 | subservice.
type ServiceID uint32

// NewServiceID is CI's ICS_NSC_SVC(chan, subservice).
func NewServiceID(channel, subservice uint16) ServiceID {
	return ServiceID(uint32(channel)<<16 | uint32(subservice))
}

// Channel is CI's ICS_CHAN(svc).
func (s ServiceID) Channel() uint16 { return uint16(s >> 16) }

// Subservice is CI's ICS_SSVC(svc).
func (s ServiceID) Subservice() uint16 { return uint16(s) }

func (s ServiceID) String() string {
	return fmt.Sprintf("%d/%d", s.Channel(), s.Subservice())
}

// Header is the decoded form of a frame header.
type Header struct {
	Type       Type
	Flags      Flags
	Priority   uint8
	Service    ServiceID
	Proc       uint32
	XID        uint64
	Length     uint32
	Aux        uint32
	SvcVersion uint16
	Status     uint16
}

// Errors returned by the decoder. A connection that produces one of these is
// closed: the stream cannot be resynchronised after a bad header.
var (
	ErrBadVersion    = errors.New("framing: unsupported protocol version")
	ErrBadType       = errors.New("framing: unknown frame type")
	ErrBadFlags      = errors.New("framing: unknown or conflicting flags")
	ErrBadPriority   = errors.New("framing: priority out of range")
	ErrFrameTooLarge = errors.New("framing: payload length over the configured maximum")
	ErrBadAux        = errors.New("framing: aux field inconsistent with frame")
)

// Encode writes h into b, which must be at least HeaderSize long.
func (h *Header) Encode(b []byte) {
	_ = b[HeaderSize-1]
	b[0] = ProtocolVersion
	if h.Type.IsHandshake() {
		b[0] = HandshakeVersion
	}
	b[1] = byte(h.Type)
	b[2] = byte(h.Flags)
	b[3] = h.Priority
	binary.LittleEndian.PutUint32(b[4:], uint32(h.Service))
	binary.LittleEndian.PutUint32(b[8:], h.Proc)
	binary.LittleEndian.PutUint64(b[12:], h.XID)
	binary.LittleEndian.PutUint32(b[20:], h.Length)
	binary.LittleEndian.PutUint32(b[24:], h.Aux)
	binary.LittleEndian.PutUint16(b[28:], h.SvcVersion)
	binary.LittleEndian.PutUint16(b[30:], h.Status)
}

// AppendHeader appends the encoding of h to b.
func AppendHeader(b []byte, h *Header) []byte {
	n := len(b)
	b = append(b, make([]byte, HeaderSize)...)
	h.Encode(b[n:])
	return b
}

// DecodeHeader parses and validates a header. maxPayload bounds both the
// wire length and, for compressed frames, the uncompressed length, so a
// caller may size buffers from the header without further checks.
func DecodeHeader(b []byte, maxPayload uint32) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("framing: short header: %d bytes", len(b))
	}
	h.Type = Type(b[1])
	// Handshake frames carry HandshakeVersion whatever the protocol version
	// (so any two versions can read each other's hello and refusal), every
	// other frame ProtocolVersion; a frame with the other one is malformed.
	want := byte(ProtocolVersion)
	if h.Type.IsHandshake() {
		want = HandshakeVersion
	}
	if b[0] != want {
		return h, fmt.Errorf("%w: %d", ErrBadVersion, b[0])
	}
	h.Flags = Flags(b[2])
	h.Priority = b[3]
	h.Service = ServiceID(binary.LittleEndian.Uint32(b[4:]))
	h.Proc = binary.LittleEndian.Uint32(b[8:])
	h.XID = binary.LittleEndian.Uint64(b[12:])
	h.Length = binary.LittleEndian.Uint32(b[20:])
	h.Aux = binary.LittleEndian.Uint32(b[24:])
	h.SvcVersion = binary.LittleEndian.Uint16(b[28:])
	h.Status = binary.LittleEndian.Uint16(b[30:])

	if h.Type == TypeInvalid || h.Type >= typeLimit {
		return h, fmt.Errorf("%w: %d", ErrBadType, uint8(h.Type))
	}
	if h.Flags&^flagsKnown != 0 || h.Flags&flagCompressionMask == flagCompressionMask {
		return h, fmt.Errorf("%w: %#x", ErrBadFlags, uint8(h.Flags))
	}
	if h.Priority > MaxPriority {
		return h, fmt.Errorf("%w: %d", ErrBadPriority, h.Priority)
	}
	if h.Length > maxPayload {
		return h, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, h.Length, maxPayload)
	}
	if h.Flags.Compressed() {
		if h.Aux > maxPayload {
			return h, fmt.Errorf("%w: uncompressed %d > %d", ErrFrameTooLarge, h.Aux, maxPayload)
		}
		if h.Type != TypeRequest && h.Type != TypeOneWay && h.Type != TypeReply {
			return h, fmt.Errorf("%w: %s frame marked compressed", ErrBadFlags, h.Type)
		}
	}
	if h.Flags&flagRequestOnly != 0 && h.Type != TypeRequest {
		return h, fmt.Errorf("%w: %s frame with request flags %#x", ErrBadFlags, h.Type, uint8(h.Flags))
	}
	if h.Flags&FlagDeadline == 0 && h.Status != 0 && (h.Type == TypeRequest || h.Type == TypeOneWay || h.Type == TypeCancel || h.Type == TypeDraining) {
		return h, fmt.Errorf("%w: %s with status %d and no deadline", ErrBadAux, h.Type, h.Status)
	}
	if (h.Type == TypeCancel || h.Type == TypeDraining) && (h.Length != 0 || h.Aux != 0) {
		return h, fmt.Errorf("%w: %s frame with length %d, aux %d", ErrBadAux, h.Type, h.Length, h.Aux)
	}
	if h.Type == TypeCredit && (h.Length != 0 || h.Aux == 0) {
		return h, fmt.Errorf("%w: credit frame with length %d, grant %d", ErrBadAux, h.Length, h.Aux)
	}
	return h, nil
}

// A timeout travels in 16 bits: the top two say the unit (microsecond,
// millisecond, second, minute), the other 14 a count of it, rounded up so
// that the server's deadline is never before the caller's. That is
// 1 µs steps up to 16 ms, 1 ms steps up to 16 s, 1 s up to 4.5 h, then
// minutes up to 11 days: within 1/16384 + one step, as precise as a
// deadline needs, in a field requests did not use.
const (
	timeoutUnitShift = 14
	timeoutMax       = 1<<timeoutUnitShift - 1
)

var timeoutUnits = [4]time.Duration{time.Microsecond, time.Millisecond, time.Second, time.Minute}

// EncodeTimeout encodes d (clamped to 0 .. about 11 days) for the status
// field of a request with FlagDeadline.
func EncodeTimeout(d time.Duration) uint16 {
	if d <= 0 {
		return 0
	}
	for u, unit := range timeoutUnits {
		n := (d + unit - 1) / unit
		if n <= timeoutMax {
			return uint16(u)<<timeoutUnitShift | uint16(n)
		}
	}
	return 3<<timeoutUnitShift | timeoutMax
}

// DecodeTimeout is the duration an EncodeTimeout value stands for: any
// 16 bits decode to a duration between 0 and about 11 days.
func DecodeTimeout(v uint16) time.Duration {
	return time.Duration(v&timeoutMax) * timeoutUnits[v>>timeoutUnitShift]
}
