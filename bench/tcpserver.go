package bench

import (
	"errors"
	"net"
	"sync"
)

// tcpServer is the accept loop the raw and net/rpc peers share: one
// goroutine per connection, and a stop that closes the listener and every
// connection and waits for all of those goroutines, so tests can check for
// leaks.
type tcpServer struct {
	ln    net.Listener
	serve func(net.Conn) // serves one connection until it fails or is closed

	wg sync.WaitGroup

	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]struct{}
	closed bool
}

// startTCP listens on addr and serves every accepted connection with serve.
func startTCP(addr string, serve func(net.Conn)) (*tcpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &tcpServer{ln: ln, serve: serve, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.routineAccept()
	return s, nil
}

func (s *tcpServer) addr() string { return s.ln.Addr().String() }

func (s *tcpServer) routineAccept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return // listener closed by stop; anything else is as final for a benchmark
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serve(conn)
			s.mu.Lock()
			delete(s.conns, conn)
			s.mu.Unlock()
			conn.Close()
		}()
	}
}

// stop closes the listener and all connections and waits for every
// goroutine of the server.
func (s *tcpServer) stop() error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
