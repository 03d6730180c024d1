package nodetest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy forwards TCP connections to a target and can blackhole them: while
// it does, bytes in both directions are read and dropped and new
// connections are accepted but never forwarded, so neither side sees a
// close or a refusal, only silence, as across a network partition.
type Proxy struct {
	ln     net.Listener
	target string
	local  *net.TCPAddr // dial the target from this address (the node the proxy stands for)

	blackhole atomic.Bool
	mu        sync.Mutex
	conns     map[net.Conn]struct{} // guarded by mu
	ended     []net.Conn            // closed by one side during a blackhole; guarded by mu
	closed    bool                  // guarded by mu
	wg        sync.WaitGroup
}

// NewProxy listens on listen ("host:0" for a free port) and forwards to
// target, dialling from fromIP ("" for any).
func NewProxy(listen, target, fromIP string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	if fromIP != "" {
		p.local = &net.TCPAddr{IP: net.ParseIP(fromIP)}
	}
	p.wg.Add(1)
	go p.routineAccept()
	return p, nil
}

// Addr is where the proxy listens.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Blackhole starts (true) or ends (false) dropping everything. Connections
// one side closed during the blackhole are closed on the other side when it
// ends, as the first packet after a healed partition meets a reset.
func (p *Proxy) Blackhole(on bool) {
	p.blackhole.Store(on)
	if on {
		return
	}
	p.mu.Lock()
	ended := p.ended
	p.ended = nil
	p.mu.Unlock()
	for _, c := range ended {
		_ = c.Close()
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) routineAccept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	if p.blackhole.Load() {
		_, _ = io.Copy(io.Discard, c) // silence until the proxy closes
		return
	}
	d := net.Dialer{LocalAddr: p.local}
	t, err := d.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close() // the target refused: so does the proxy, as closely as it can
		return
	}
	if !p.track(t) {
		return
	}
	p.wg.Add(2)
	go p.pipe(t, c)
	go p.pipe(c, t)
}

// pipe copies from src to dst, dropping what it reads while blackholed.
// When src ends, so does dst: at once, or when a blackhole ends (under a
// partition nothing passes, not even a close).
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.blackhole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			_ = src.Close()
			p.mu.Lock()
			if p.blackhole.Load() {
				p.ended = append(p.ended, dst)
			} else {
				_ = dst.Close()
			}
			p.mu.Unlock()
			return
		}
	}
}
