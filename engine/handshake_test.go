package engine

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// refusedAs checks that err is a refusal by the peer for reason.
func refusedAs(t *testing.T, err error, reason framing.RefuseReason) *HandshakeError {
	t.Helper()
	var he *HandshakeError
	if !errors.As(err, &he) || he.Reason != reason {
		t.Fatalf("got %v, want a refusal for %q", err, reason)
	}
	return he
}

// TestHandshakeRejections: each bad hello is refused at once (well within
// HandshakeTimeout, so a close by the timeout cannot pass for it), counted
// once as a handshake rejection and not as a bad frame, and the dialler is
// told the specific reason.
func TestHandshakeRejections(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.HandshakeTimeout = 20 * time.Second })
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	rejects := func() uint64 { return nodes[1].m.handshakeRejects.Get() }
	badFrames := func() uint64 { return nodes[1].m.badFrames.Get() }
	// counted checks that what ran was one rejection and no bad frame.
	counted := func(t *testing.T, rejectsBefore, badBefore uint64) {
		t.Helper()
		if got := rejects() - rejectsBefore; got != 1 {
			t.Errorf("%d handshake rejections counted, want 1", got)
		}
		if got := badFrames() - badBefore; got != 0 {
			t.Errorf("%d bad frames counted, want 0", got)
		}
	}
	dialler := func(t *testing.T, num NodeNum, cluster, addr string, peers map[NodeNum]string) *Node {
		cfg := DefaultConfig()
		cfg.Insecure = true
		cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Peers = num, cluster, addr, peers
		cfg.DialBackoff, cfg.MaxDialBackoff = time.Minute, time.Minute // the second call below meets the backoff
		return startNode(t, cfg)
	}
	for _, tc := range []struct {
		name    string
		num     NodeNum
		cluster string
		to      NodeNum // the number it believes node 2's address has
		reason  framing.RefuseReason
		detail  string
	}{
		{"wrong cluster", 1, "other", 2, framing.RefuseCluster, `cluster "other" is not this node's`},
		{"unknown node", 7, "test", 2, framing.RefuseUnknownNode, "node 7 is not a member"},
		{"wrong destination", 1, "test", 3, framing.RefuseWrongNode, "dialler wanted node 3, this is node 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r0, b0 := rejects(), badFrames()
			d := dialler(t, tc.num, tc.cluster, "127.0.0.3:0", map[NodeNum]string{tc.to: nodes[1].Addr()})
			_, err := d.Call(ctxFor(t, 5*time.Second), tc.to, Method{Service: echoSvc}, nil, nil)
			if !errors.Is(err, ErrHandshake) {
				t.Fatalf("got %v, want ErrHandshake", err)
			}
			if he := refusedAs(t, err, tc.reason); !strings.Contains(he.Detail, tc.detail) {
				t.Errorf("detail %q, want it to say %q", he.Detail, tc.detail)
			}
			if strings.Contains(err.Error(), `"test"`) && tc.cluster != "test" {
				t.Errorf("the refusal told a stranger the cluster's name: %v", err)
			}
			counted(t, r0, b0)
			// While the dial backs off, the call fails at once with the
			// refusal, as itself: not ErrNodeDown as well.
			_, err = d.Call(ctxFor(t, 5*time.Second), tc.to, Method{Service: echoSvc}, nil, nil)
			oneSentinel(t, err, ErrHandshake, StatusHandshake)
			refusedAs(t, err, tc.reason)
			if !strings.Contains(err.Error(), "next dial in") {
				t.Errorf("during the backoff: %v, want it to say when the next dial is", err)
			}
		})
	}

	// raw sends payload as a dialler and returns the refusal the node
	// answers, read within a deadline far below HandshakeTimeout.
	raw := func(t *testing.T, payload []byte) framing.Refusal {
		t.Helper()
		c, err := net.Dial("tcp", nodes[1].Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(nodes[1].cfg.HandshakeTimeout / 4))
		rest, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("not refused at once: %v", err)
		}
		h, err := framing.DecodeHeader(rest, 1<<10)
		if err != nil || h.Type != framing.TypeRefuse || int(h.Length) != len(rest)-framing.HeaderSize {
			t.Fatalf("node answered %v %+v (%d bytes) instead of a refusal", err, h, len(rest))
		}
		r, err := framing.DecodeRefusal(rest[framing.HeaderSize:])
		if err != nil {
			t.Fatal(err)
		}
		if r.Version != framing.ProtocolVersion {
			t.Errorf("refusal says version %d, want %d", r.Version, framing.ProtocolVersion)
		}
		return r
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
	withVersion := func(v uint16) []byte { h := good; h.Version = v; return hello(h) }
	withChannel := func(ch uint8) []byte { h := good; h.Channel = ch; return hello(h) }
	frameVersion := func(v byte) []byte { b := hello(good); b[0] = v; return b }
	request := func() []byte {
		b := make([]byte, framing.HeaderSize)
		h := framing.Header{Type: framing.TypeRequest, Service: echoSvc, XID: 1}
		h.Encode(b)
		return b
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		reason  framing.RefuseReason
	}{
		{"bad protocol version in hello", withVersion(99), framing.RefuseVersion},
		{"bad frame version", frameVersion(9), framing.RefuseVersion},
		{"request before hello", request(), framing.RefuseBadHello},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), framing.RefuseVersion},
		{"channel out of range", withChannel(200), framing.RefuseChannel},
		{"reserved channel (replies travel on their request's connection)", withChannel(uint8(chanReservedReply)), framing.RefuseChannel},
		{"authenticating dialler, open node", func() []byte { h := good; h.Auth = []byte("x"); return hello(h) }(), framing.RefuseSecurity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r0, b0 := rejects(), badFrames()
			if r := raw(t, tc.payload); r.Reason != tc.reason {
				t.Errorf("refused for %q (%q), want %q", r.Reason, r.Detail, tc.reason)
			}
			counted(t, r0, b0)
		})
	}

	// The members still talk to each other after all that.
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatalf("member call after rejections: %v", err)
	}
}

// TestVersionMismatch: a node of another protocol version reaches a clear
// refusal both ways, ErrVersMismatch with the peer's version, never
// ErrNodeDown (the hello was refused before its version was read).
func TestVersionMismatch(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[0], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Insecure = 3, "test", "127.0.0.3:0", true
	cfg.Peers = map[NodeNum]string{1: nodes[0].Addr()}
	next, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	next.version = framing.ProtocolVersion + 1 // a node of the next version
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	mustRegister(t, next, Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	if err := nodes[0].SetPeer(3, next.Addr()); err != nil {
		t.Fatal(err)
	}

	// The new node dials an old one, and an old one dials the new one.
	for name, call := range map[string]func() error{
		"new to old": func() error {
			_, err := next.Call(ctxFor(t, 5*time.Second), 1, Method{Service: echoSvc}, nil, nil)
			return err
		},
		"old to new": func() error {
			_, err := nodes[0].Call(ctxFor(t, 5*time.Second), 3, Method{Service: echoSvc}, nil, nil)
			return err
		},
	} {
		err := call()
		if !errors.Is(err, ErrVersMismatch) || errors.Is(err, ErrNodeDown) || errors.Is(err, ErrHandshake) {
			t.Fatalf("%s: got %v, want ErrVersMismatch alone", name, err)
		}
		// Again at once: the dial backs off, and says why, as itself.
		if err := call(); !errors.Is(err, ErrVersMismatch) || errors.Is(err, ErrNodeDown) || errors.Is(err, ErrHandshake) {
			t.Fatalf("%s, again: got %v, want ErrVersMismatch alone", name, err)
		}
		he := refusedAs(t, err, framing.RefuseVersion)
		want := map[string]uint16{"new to old": framing.ProtocolVersion, "old to new": framing.ProtocolVersion + 1}[name]
		if he.Version != want {
			t.Fatalf("%s: refusal says version %d, want %d", name, he.Version, want)
		}
	}
	// Old nodes still talk to each other.
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
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
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}
