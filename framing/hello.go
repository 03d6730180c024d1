package framing

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxClusterName bounds the cluster name carried in a Hello.
const MaxClusterName = 255

// MaxHelloAuth bounds the authentication blob carried in a Hello.
const MaxHelloAuth = 1024

// Hello is the handshake payload. The dialler sends it in a TypeHello frame
// as the first bytes of every connection; the acceptor answers with its own
// in a TypeHelloAck frame. No other frame is accepted before it.
//
// Encoding, little-endian:
//
//	off size field
//	  0    2 version      ProtocolVersion of the sender
//	  2    4 from         sender's node number
//	  6    4 to           node number the sender believes it is talking to
//	 10    1 channel      ICS channel this connection serves
//	 11    8 incarnation  sender's boot incarnation; changes on every restart
//	 19    1 namelen      length of the cluster name, 1..MaxClusterName
//	 20    n name         cluster name
//	 20+n  2 authlen      length of the authentication blob, 0..MaxHelloAuth
//	 22+n  m auth         authentication blob (opaque here)
type Hello struct {
	Version     uint16
	From, To    uint32
	Channel     uint8
	Incarnation uint64
	Cluster     string
	Auth        []byte
}

// ErrBadHello is returned for a handshake payload that does not parse.
var ErrBadHello = errors.New("framing: malformed hello")

const helloFixed = 20

// AppendHello appends the encoding of h to b.
func AppendHello(b []byte, h *Hello) ([]byte, error) {
	if len(h.Cluster) == 0 || len(h.Cluster) > MaxClusterName {
		return b, fmt.Errorf("%w: cluster name of %d bytes (want 1..%d)", ErrBadHello, len(h.Cluster), MaxClusterName)
	}
	if len(h.Auth) > MaxHelloAuth {
		return b, fmt.Errorf("%w: auth blob of %d bytes over %d", ErrBadHello, len(h.Auth), MaxHelloAuth)
	}
	b = binary.LittleEndian.AppendUint16(b, h.Version)
	b = binary.LittleEndian.AppendUint32(b, h.From)
	b = binary.LittleEndian.AppendUint32(b, h.To)
	b = append(b, h.Channel)
	b = binary.LittleEndian.AppendUint64(b, h.Incarnation)
	b = append(b, byte(len(h.Cluster)))
	b = append(b, h.Cluster...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Auth)))
	b = append(b, h.Auth...)
	return b, nil
}

// DecodeHello parses a handshake payload. Auth aliases p.
func DecodeHello(p []byte) (Hello, error) {
	var h Hello
	if len(p) < helloFixed {
		return h, fmt.Errorf("%w: %d bytes, need at least %d", ErrBadHello, len(p), helloFixed)
	}
	h.Version = binary.LittleEndian.Uint16(p[0:])
	h.From = binary.LittleEndian.Uint32(p[2:])
	h.To = binary.LittleEndian.Uint32(p[6:])
	h.Channel = p[10]
	h.Incarnation = binary.LittleEndian.Uint64(p[11:])
	n := int(p[19])
	if n == 0 {
		return h, fmt.Errorf("%w: empty cluster name", ErrBadHello)
	}
	rest := p[helloFixed:]
	if len(rest) < n+2 {
		return h, fmt.Errorf("%w: truncated cluster name", ErrBadHello)
	}
	h.Cluster = string(rest[:n])
	rest = rest[n:]
	m := int(binary.LittleEndian.Uint16(rest))
	rest = rest[2:]
	if m > MaxHelloAuth {
		return h, fmt.Errorf("%w: auth blob of %d bytes over %d", ErrBadHello, m, MaxHelloAuth)
	}
	if len(rest) != m {
		return h, fmt.Errorf("%w: auth blob of %d bytes, %d present", ErrBadHello, m, len(rest))
	}
	if m > 0 {
		h.Auth = rest[:m:m]
	}
	return h, nil
}
