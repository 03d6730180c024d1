package engine

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

func TestHandshakeRejections(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})

	// A node of another cluster, numbered like a member.
	t.Run("wrong cluster", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Insecure = true
		cfg.Node, cfg.Cluster, cfg.ListenAddr = 1, "other", "127.0.0.3:0"
		cfg.Peers = map[NodeNum]string{2: nodes[1].Addr()}
		stranger := startNode(t, cfg)
		_, err := stranger.Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil)
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("got %v, want ErrHandshake", err)
		}
	})
	// A node of this cluster that node 2 does not list.
	t.Run("unknown node", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Insecure = true
		cfg.Node, cfg.Cluster, cfg.ListenAddr = 7, "test", "127.0.0.7:0"
		cfg.Peers = map[NodeNum]string{2: nodes[1].Addr()}
		stranger := startNode(t, cfg)
		_, err := stranger.Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil)
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("got %v, want ErrHandshake", err)
		}
	})
	// A dialler that believes node 2's address is node 3's.
	t.Run("wrong destination", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Insecure = true
		cfg.Node, cfg.Cluster, cfg.ListenAddr = 1, "test", "127.0.0.3:0"
		cfg.Peers = map[NodeNum]string{3: nodes[1].Addr()}
		confused := startNode(t, cfg)
		_, err := confused.Call(ctxFor(t, 5*time.Second), 3, Method{Service: echoSvc}, nil, nil)
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("got %v, want ErrHandshake", err)
		}
	})

	rejects := func() uint64 { return nodes[1].m.handshakeRejects.Get() }
	raw := func(t *testing.T, payload []byte) {
		t.Helper()
		before := rejects()
		c, err := net.Dial("tcp", nodes[1].Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		// The node answers a refusal at most, then closes: read to EOF.
		rest, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("connection not closed by the node: %v", err)
		}
		if len(rest) > 0 {
			h, err := framing.DecodeHeader(rest, 1<<10)
			if err != nil || h.Type != framing.TypeHelloAck || h.Status == 0 {
				t.Fatalf("node answered %v %+v instead of a refusal", err, h)
			}
		}
		eventually(t, "reject counted", func() bool { return rejects() > before || nodes[1].m.badFrames.Get() > 0 })
	}
	hello := func(h framing.Hello) []byte {
		p, err := framing.AppendHello(nil, &h)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, framing.HeaderSize)
		hdr := framing.Header{Type: framing.TypeHello, Length: uint32(len(p))}
		hdr.Encode(b)
		return append(b, p...)
	}
	good := framing.Hello{Version: framing.ProtocolVersion, From: 1, To: 2, Channel: uint8(ChanFirstService), Incarnation: 1, Cluster: "test"}

	t.Run("bad protocol version in hello", func(t *testing.T) {
		h := good
		h.Version = 99
		raw(t, hello(h))
	})
	t.Run("bad frame version", func(t *testing.T) {
		b := hello(good)
		b[0] = 9
		raw(t, b)
	})
	t.Run("request before hello", func(t *testing.T) {
		b := make([]byte, framing.HeaderSize)
		h := framing.Header{Type: framing.TypeRequest, Service: echoSvc, XID: 1}
		h.Encode(b)
		raw(t, b)
	})
	t.Run("garbage", func(t *testing.T) {
		raw(t, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"))
	})
	t.Run("channel out of range", func(t *testing.T) {
		h := good
		h.Channel = 200
		raw(t, hello(h))
	})

	// The members still talk to each other after all that.
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatalf("member call after rejections: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	nodes := startCluster(t, 1, func(c *Config) { c.HandshakeTimeout = 100 * time.Millisecond })
	c, err := net.Dial("tcp", nodes[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// Say nothing: the node must close the connection by itself.
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("silent connection not closed: %v", err)
	}
	if nodes[0].m.handshakeRejects.Get() == 0 {
		t.Fatal("timeout not counted")
	}
}

func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	cfg.Logger = testLogger(t)
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}
