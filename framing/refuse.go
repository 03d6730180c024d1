package framing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// HandshakeVersion is byte 0 of the header of every handshake frame
// (TypeHello, TypeHelloAck, TypeRefuse), in every protocol version, and
// the layout of Hello's fixed fields and of Refusal never changes: so a
// node of any version can read any other's hello and answer it, at least
// with a refusal that names its own version (Hello.Version and
// Refusal.Version say which protocol each side speaks). This is what lets
// a rolling upgrade tell "another version" apart from "node down".
const HandshakeVersion = 1

// IsHandshake reports whether frames of type t open a connection.
func (t Type) IsHandshake() bool {
	return t == TypeHello || t == TypeHelloAck || t == TypeRefuse
}

// RefuseReason says why an acceptor refused a connection. Only appended to.
type RefuseReason uint8

const (
	RefuseUnspecified  RefuseReason = 0  // an old node's bare refusal, or a reason this version does not know
	RefuseVersion      RefuseReason = 1  // the acceptor speaks another protocol version (Refusal.Version)
	RefuseCluster      RefuseReason = 2  // the hello names another cluster
	RefuseWrongNode    RefuseReason = 3  // the hello is addressed to another node number than the acceptor's
	RefuseUnknownNode  RefuseReason = 4  // the dialler is not a member the acceptor knows (or has no key for)
	RefuseChannel      RefuseReason = 5  // the channel number is out of the acceptor's range
	RefuseDeclaredDown RefuseReason = 6  // the acceptor has declared the dialler down (until NodeUp)
	RefuseSecurity     RefuseReason = 7  // security modes differ: off on one side, or authenticate vs encrypt
	RefuseClusterKey   RefuseReason = 8  // the hello names a cluster key the acceptor does not accept
	RefuseAuth         RefuseReason = 9  // authentication failed; the acceptor says no more (see its log)
	RefuseBusy         RefuseReason = 10 // a bound on handshakes or connections; try again later
	RefuseBadHello     RefuseReason = 11 // the hello or the confirmation does not parse
	refuseLimit        RefuseReason = 12
)

var refuseNames = [...]string{"unspecified", "version", "cluster", "wrong node", "unknown node", "channel",
	"declared down", "security mode", "cluster key", "authentication", "busy", "bad hello"}

func (r RefuseReason) String() string {
	if r < refuseLimit {
		return refuseNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// MaxRefusalDetail bounds the text a refusal carries.
const MaxRefusalDetail = 200

// Refusal is the payload of a TypeRefuse frame, the acceptor's answer to a
// hello it will not take. It says only what leaks no secret: a reason, the
// acceptor's protocol version and a short text for the dialler's error.
//
// Encoding, little-endian:
//
//	off size field
//	  0    1 reason   RefuseReason
//	  1    2 version  ProtocolVersion of the refusing node
//	  3    n detail   UTF-8 text, 0..MaxRefusalDetail bytes, to the end of the payload
type Refusal struct {
	Reason  RefuseReason
	Version uint16
	Detail  string
}

// ErrBadRefusal is returned for a refusal payload that does not parse.
var ErrBadRefusal = errors.New("framing: malformed refusal")

const refusalFixed = 3

// AppendRefusal appends the encoding of r to b, cutting the detail to
// MaxRefusalDetail bytes (on a rune boundary).
func AppendRefusal(b []byte, r *Refusal) []byte {
	d := r.Detail
	if len(d) > MaxRefusalDetail {
		d = d[:MaxRefusalDetail]
		for len(d) > 0 && !utf8.ValidString(d) {
			d = d[:len(d)-1]
		}
	}
	b = append(b, byte(r.Reason))
	b = binary.LittleEndian.AppendUint16(b, r.Version)
	return append(b, d...)
}

// DecodeRefusal parses a refusal payload. An unknown reason is kept as it
// came (a newer node's); the detail must be valid UTF-8 within the bound.
func DecodeRefusal(p []byte) (Refusal, error) {
	if len(p) < refusalFixed {
		return Refusal{}, fmt.Errorf("%w: %d bytes, need at least %d", ErrBadRefusal, len(p), refusalFixed)
	}
	d := p[refusalFixed:]
	if len(d) > MaxRefusalDetail {
		return Refusal{}, fmt.Errorf("%w: detail of %d bytes over %d", ErrBadRefusal, len(d), MaxRefusalDetail)
	}
	if !utf8.Valid(d) {
		return Refusal{}, fmt.Errorf("%w: detail is not UTF-8", ErrBadRefusal)
	}
	return Refusal{Reason: RefuseReason(p[0]), Version: binary.LittleEndian.Uint16(p[1:]), Detail: string(d)}, nil
}
