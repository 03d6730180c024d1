package bench

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
)

// Raw is the baseline: plain Go TCP ping-pong, a 4-byte big-endian length
// and the payload each way, one goroutine per connection on the server and
// Go's defaults (TCP_NODELAY on). It has no multiplexing, so its client
// keeps one connection per concurrent caller: the least any RPC system over
// TCP can cost.
type Raw struct{}

func (*Raw) Name() string { return "raw" }

func (*Raw) Serve(listen string) (string, func() error, error) {
	s, err := startTCP(listen, serveRaw)
	if err != nil {
		return "", nil, err
	}
	return s.addr(), s.stop, nil
}

// serveRaw answers requests on conn until it fails or closes.
func serveRaw(conn net.Conn) {
	rc := newRawConn(conn)
	var req []byte
	for {
		var err error
		if req, err = rc.read(req[:0]); err != nil {
			return
		}
		rc.wbuf, err = Reply(rc.frame(), req)
		if err != nil {
			return // a broken request ends the connection: the client is not ours
		}
		if err := rc.flush(); err != nil {
			return
		}
	}
}

// rawConn is one framed connection, used by one goroutine at a time.
type rawConn struct {
	conn net.Conn
	r    *bufio.Reader // one read syscall per message in the common case
	wbuf []byte        // frame being written: header and payload, sent with one write
	rhdr [4]byte       // length being read; here, not on the stack, where io.ReadFull would make it escape
}

func newRawConn(conn net.Conn) *rawConn {
	return &rawConn{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
}

// frame starts a frame in wbuf and returns it for the payload to be appended.
func (c *rawConn) frame() []byte {
	return append(c.wbuf[:0], 0, 0, 0, 0)
}

// flush fills in the length and writes the frame.
func (c *rawConn) flush() error {
	binary.BigEndian.PutUint32(c.wbuf, uint32(len(c.wbuf)-4))
	_, err := c.conn.Write(c.wbuf)
	return err
}

// read appends the next frame's payload to dst.
func (c *rawConn) read(dst []byte) ([]byte, error) {
	if _, err := io.ReadFull(c.r, c.rhdr[:]); err != nil {
		return dst, err
	}
	n := int(binary.BigEndian.Uint32(c.rhdr[:]))
	if n > MaxMessage {
		return dst, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrBadRequest, n, MaxMessage)
	}
	start := len(dst)
	dst = slices.Grow(dst, n)[:start+n]
	_, err := io.ReadFull(c.r, dst[start:])
	return dst, err
}

func (*Raw) Dial(addr string) (Client, error) {
	c := &rawClient{addr: addr}
	// Dial one connection now so that a wrong address fails here, not in
	// the first timed call.
	rc, err := c.dial()
	if err != nil {
		return nil, err
	}
	c.put(rc)
	return c, nil
}

// rawClient hands each concurrent Call its own connection, dialling more
// as concurrency grows.
type rawClient struct {
	addr string

	mu     sync.Mutex // guards idle, all, closed
	idle   []*rawConn
	all    map[*rawConn]struct{}
	closed bool
}

func (c *rawClient) dial() (*rawConn, error) {
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		return nil, err
	}
	rc := newRawConn(conn)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		conn.Close()
		return nil, net.ErrClosed
	}
	if c.all == nil {
		c.all = make(map[*rawConn]struct{})
	}
	c.all[rc] = struct{}{}
	return rc, nil
}

func (c *rawClient) get() (*rawConn, error) {
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		rc := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return rc, nil
	}
	c.mu.Unlock()
	return c.dial()
}

func (c *rawClient) put(rc *rawConn) {
	c.mu.Lock()
	c.idle = append(c.idle, rc)
	c.mu.Unlock()
}

// drop closes a connection that failed mid-call: its stream is out of step.
func (c *rawClient) drop(rc *rawConn) {
	c.mu.Lock()
	delete(c.all, rc)
	c.mu.Unlock()
	rc.conn.Close()
}

func (c *rawClient) Call(req, resp []byte) ([]byte, error) {
	rc, err := c.get()
	if err != nil {
		return resp, err
	}
	rc.wbuf = append(rc.frame(), req...)
	if err := rc.flush(); err != nil {
		c.drop(rc)
		return resp, err
	}
	resp, err = rc.read(resp)
	if err != nil {
		c.drop(rc)
		return resp, err
	}
	c.put(rc)
	return resp, nil
}

func (c *rawClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for rc := range c.all {
		rc.conn.Close()
	}
	c.all, c.idle = nil, nil
	return nil
}
