package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A Peer is one RPC system under test: it can serve the echo protocol and
// dial a client for it. Serve and Dial may be used in one process (tests,
// Go benchmarks) or in two (cibench serve / cibench compare).
type Peer interface {
	// Name is the peer's name as ParsePeer accepts it.
	Name() string
	// Serve starts an echo server on listen ("127.0.0.1:0" picks a port) and
	// returns the address it listens on and a stop function that closes the
	// server and waits until every goroutine it started has returned.
	Serve(listen string) (addr string, stop func() error, err error)
	// Dial connects a client to a server at addr.
	Dial(addr string) (Client, error)
}

// A Client makes echo calls. Call is safe for concurrent use; the runner
// calls it from every concurrent caller at once.
type Client interface {
	// Call sends req, waits for the reply and returns it appended to resp
	// (pass resp[:0] to reuse a buffer, as engine.Node.Call does).
	Call(req, resp []byte) ([]byte, error)
	// Close releases the client's connections.
	Close() error
}

// MaxMessage bounds request and response sizes. Servers check lengths read
// from the network against it before allocating (STYLE.md 5).
const MaxMessage = 16 << 20

// headerSize is the part of a request that says how big the response must be.
const headerSize = 4

// Errors.
var (
	ErrBadRequest = errors.New("bench: bad echo request")
	ErrBadReply   = errors.New("bench: wrong echo reply")
	ErrUnknown    = errors.New("bench: unknown peer")
)

// The echo protocol, shared by every peer so that they all do the same
// work: a request is at least 4 bytes, the first 4 (big-endian) being the
// size of the response wanted; the response is the request repeated and
// cut to that size. With equal sizes it is a plain echo.

// NewRequest returns a request of size bytes (at least 4) asking for a
// respSize-byte response. The bytes after the header are a fixed pattern so
// that a reply can be checked.
func NewRequest(size, respSize int) ([]byte, error) {
	if size < headerSize || size > MaxMessage || respSize < 0 || respSize > MaxMessage {
		return nil, fmt.Errorf("%w: sizes %d/%d: request needs %d..%d bytes, response 0..%[5]d",
			ErrBadRequest, size, respSize, headerSize, MaxMessage)
	}
	req := make([]byte, size)
	binary.BigEndian.PutUint32(req, uint32(respSize))
	for i := headerSize; i < size; i++ {
		req[i] = byte(i*31 + 7)
	}
	return req, nil
}

// Reply appends the response to req to dst. Servers call it.
func Reply(dst, req []byte) ([]byte, error) {
	if len(req) < headerSize {
		return dst, fmt.Errorf("%w: %d bytes, need at least %d", ErrBadRequest, len(req), headerSize)
	}
	n := int(binary.BigEndian.Uint32(req))
	if n > MaxMessage {
		return dst, fmt.Errorf("%w: response of %d bytes wanted, limit %d", ErrBadRequest, n, MaxMessage)
	}
	start := len(dst)
	dst = slices.Grow(dst, n)[:start+n]
	out := dst[start:]
	// Copy the request once, then double what is already there: a few
	// memmoves instead of a byte loop, whatever the sizes.
	done := copy(out, req)
	for done < n && done > 0 {
		done += copy(out[done:], out[:done])
	}
	return dst, nil
}

// CheckReply reports whether reply is the right response to req.
func CheckReply(req, reply []byte) error {
	want, err := Reply(nil, req)
	if err != nil {
		return err
	}
	if len(reply) != len(want) {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadReply, len(reply), len(want))
	}
	for i := range want {
		if reply[i] != want[i] {
			return fmt.Errorf("%w: byte %d is %#x, want %#x", ErrBadReply, i, reply[i], want[i])
		}
	}
	return nil
}

// responseSize is the response size req asks for, for cheap checks on the
// client side (the runner checks lengths on every call, content in tests).
func responseSize(req []byte) int {
	return int(binary.BigEndian.Uint32(req))
}

// PeerNames lists the names ParsePeer accepts.
func PeerNames() []string {
	return []string{"raw", "raw-split", "netrpc", "grpc", "ics", "ics-handle", "ics-eventloop", "ics-handle-eventloop", "ics-gnet", "ics-netpoll", "ics-handle-gnet", "ics-handle-netpoll"}
}

// ParsePeer returns the peer called name. The ICS variants are "ics"
// (handler inline on the reading goroutine, direct writes, the engine's
// default read mode), with "-handle" for handlers on server handle
// goroutines, "-eventloop" for writes through the event loop, "-gnet" or
// "-netpoll" for sockets read by gnet's event loops or by netpoller
// goroutines (engine.ReadMode), and "-loopsN" for N event loops per node,
// in that order.
func ParsePeer(name string) (Peer, error) {
	switch name {
	case "raw":
		return &Raw{}, nil
	case "raw-split":
		return &RawSplit{}, nil
	case "netrpc":
		return &NetRPC{}, nil
	case "grpc":
		return &GRPC{}, nil
	}
	if rest, ok := strings.CutPrefix(name, "ics"); ok {
		if p, ok := parseICS(rest); ok {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(PeerNames(), ", "))
}
