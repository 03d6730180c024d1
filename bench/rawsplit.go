package bench

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
)

// RawSplit is raw TCP ping-pong with ICS's connection layout: requests go
// on one connection and replies come back on another, as ICS sends a reply
// on the replier's reply channel rather than back on the request's
// connection. Everything else is Raw's (framing, one goroutine per
// connection, one connection pair per concurrent caller), so the
// difference between the two is what the second connection costs the
// kernel and the scheduler (issue 10's fast-mode question).
//
// A client opens its pair with a 9-byte hello on each connection: an 8-byte
// pair id and a role byte (pairRequests, pairReplies). The server waits for
// both halves, then reads requests on one and writes replies on the other.
type RawSplit struct{}

const (
	pairRequests byte = 0
	pairReplies  byte = 1
	pairHello         = 9
)

func (*RawSplit) Name() string { return "raw-split" }

func (*RawSplit) Serve(listen string) (string, func() error, error) {
	pairs := &splitPairs{waiting: map[uint64]chan net.Conn{}, done: make(chan struct{})}
	s, err := startTCP(listen, pairs.serve)
	if err != nil {
		return "", nil, err
	}
	stop := func() error {
		close(pairs.done) // before the connections close: a requests half waiting for its partner ends too
		return s.stop()
	}
	return s.addr(), stop, nil
}

// splitPairs matches the two halves of each client pair by id.
type splitPairs struct {
	done    chan struct{} // closed when the server stops
	mu      sync.Mutex
	waiting map[uint64]chan net.Conn // id -> where the replies half is handed to the requests half
}

func (p *splitPairs) slot(id uint64) chan net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch, ok := p.waiting[id]
	if !ok {
		ch = make(chan net.Conn, 1)
		p.waiting[id] = ch
	}
	return ch
}

func (p *splitPairs) forget(id uint64) {
	p.mu.Lock()
	delete(p.waiting, id)
	p.mu.Unlock()
}

func (p *splitPairs) serve(conn net.Conn) {
	var hello [pairHello]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return
	}
	id := binary.BigEndian.Uint64(hello[:8])
	switch hello[8] {
	case pairReplies:
		// The requests half's goroutine writes on this connection; this one
		// only holds it until the client or the server closes it.
		p.slot(id) <- conn
		_, _ = io.Copy(io.Discard, conn)
	case pairRequests:
		defer p.forget(id)
		in := newRawConn(conn)
		var out *rawConn
		var req []byte
		for {
			var err error
			if req, err = in.read(req[:0]); err != nil {
				return
			}
			if out == nil {
				// The client sent the replies half's hello before this
				// request, so its partner is on the way.
				select {
				case rc := <-p.slot(id):
					out = newRawConn(rc)
				case <-p.done:
					return
				}
			}
			if out.wbuf, err = Reply(out.frame(), req); err != nil {
				return
			}
			if err := out.flush(); err != nil {
				return
			}
		}
	}
}

func (*RawSplit) Dial(addr string) (Client, error) {
	c := &splitClient{addr: addr}
	sp, err := c.dial()
	if err != nil {
		return nil, err
	}
	c.put(sp)
	return c, nil
}

// splitPair is one caller's requests and replies connections.
type splitPair struct{ req, rep *rawConn }

type splitClient struct {
	addr string

	mu     sync.Mutex // guards idle, all, closed
	idle   []*splitPair
	all    map[*splitPair]struct{}
	closed bool
}

func (c *splitClient) dial() (*splitPair, error) {
	var hello [pairHello]byte
	if _, err := rand.Read(hello[:8]); err != nil {
		return nil, err
	}
	var conns [2]net.Conn
	for i, role := range []byte{pairRequests, pairReplies} {
		conn, err := net.Dial("tcp", c.addr)
		if err == nil {
			hello[8] = role
			_, err = conn.Write(hello[:])
		}
		if err != nil {
			if conn != nil {
				conn.Close()
			}
			if conns[0] != nil {
				conns[0].Close()
			}
			return nil, fmt.Errorf("raw-split: dial %s: %w", c.addr, err)
		}
		conns[i] = conn
	}
	sp := &splitPair{req: newRawConn(conns[0]), rep: newRawConn(conns[1])}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		sp.close()
		return nil, net.ErrClosed
	}
	if c.all == nil {
		c.all = make(map[*splitPair]struct{})
	}
	c.all[sp] = struct{}{}
	return sp, nil
}

func (sp *splitPair) close() {
	sp.req.conn.Close()
	sp.rep.conn.Close()
}

func (c *splitClient) get() (*splitPair, error) {
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		sp := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return sp, nil
	}
	c.mu.Unlock()
	return c.dial()
}

func (c *splitClient) put(sp *splitPair) {
	c.mu.Lock()
	c.idle = append(c.idle, sp)
	c.mu.Unlock()
}

func (c *splitClient) drop(sp *splitPair) {
	c.mu.Lock()
	delete(c.all, sp)
	c.mu.Unlock()
	sp.close()
}

func (c *splitClient) Call(req, resp []byte) ([]byte, error) {
	sp, err := c.get()
	if err != nil {
		return resp, err
	}
	sp.req.wbuf = append(sp.req.frame(), req...)
	if err := sp.req.flush(); err != nil {
		c.drop(sp)
		return resp, err
	}
	if resp, err = sp.rep.read(resp); err != nil {
		c.drop(sp)
		return resp, err
	}
	c.put(sp)
	return resp, nil
}

func (c *splitClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for sp := range c.all {
		sp.close()
	}
	c.all, c.idle = nil, nil
	return nil
}
