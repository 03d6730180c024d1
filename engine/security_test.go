package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// clusterKeys makes a cluster key and one node key per member 1..count.
func clusterKeys(t testing.TB, count int) (ClusterKey, []NodeKey) {
	t.Helper()
	ck, err := GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]NodeKey, count+1)
	for i := 1; i <= count; i++ {
		if keys[i], err = GenerateNodeKey(); err != nil {
			t.Fatal(err)
		}
	}
	return ck, keys
}

func securityFor(mode SecurityMode, num int, ck ClusterKey, keys []NodeKey) *Security {
	s := &Security{Mode: mode, NodeKey: keys[num], ClusterKeys: []ClusterKey{ck}, PeerKeys: map[NodeNum]PublicKey{}}
	for i := 1; i < len(keys); i++ {
		if i != num {
			s.PeerKeys[NodeNum(i)] = keys[i].Public
		}
	}
	return s
}

func startSecureCluster(t testing.TB, mode SecurityMode, count int) ([]*Node, ClusterKey, []NodeKey) {
	ck, keys := clusterKeys(t, count)
	nodes := startCluster(t, count, func(c *Config) { c.Security = securityFor(mode, int(c.Node), ck, keys) })
	return nodes, ck, keys
}

func TestSecureCalls(t *testing.T) {
	for _, mode := range []SecurityMode{SecurityAuthenticate, SecurityEncrypt} {
		t.Run(mode.String(), func(t *testing.T) {
			nodes, _, _ := startSecureCluster(t, mode, 2)
			mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Compression: framing.CompressS2, CompressAbove: 1024})
			mustRegister(t, nodes[1], Service{ID: slowSvc, Procs: []Handler{echo}, Inline: true})
			big := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: many records
			for _, args := range [][]byte{[]byte("small"), big, make([]byte, 200_000)} {
				for _, m := range []Method{{Service: echoSvc}, {Service: slowSvc}, {Service: echoSvc, Compression: framing.CompressS2, CompressAbove: 1024}} {
					got, err := nodes[0].Call(ctxFor(t, 20*time.Second), 2, m, args, nil)
					if err != nil || !bytes.Equal(got, args) {
						t.Fatalf("%d bytes via %v: got %d bytes, %v", len(args), m, len(got), err)
					}
				}
			}
			// Priority traffic and replies take the same protection.
			if _, err := nodes[0].Call(WithPriority(ctxFor(t, 5*time.Second), 2), 2, Method{Service: echoSvc}, []byte("p"), nil); err != nil {
				t.Fatal(err)
			}
			if mode == SecurityEncrypt {
				c := nodes[0].peer(2).out[ChanFirstService].Load()
				if c.tx == nil || c.rx == nil {
					t.Fatal("encrypt mode connection without cipher states")
				}
			}
		})
	}
}

func TestSecureRejections(t *testing.T) {
	nodes, ck, keys := startSecureCluster(t, SecurityEncrypt, 2)
	target := nodes[1]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
	failures := func() uint64 { return target.m.authFailures.Get() + target.m.handshakeRejects.Get() }
	otherCK, _ := GenerateClusterKey()
	stranger, _ := GenerateNodeKey()

	cases := []struct {
		name   string
		num    NodeNum
		sec    *Security
		reason framing.RefuseReason
	}{
		{"no authentication", 1, nil, framing.RefuseSecurity},
		{"wrong cluster key", 1, &Security{Mode: SecurityEncrypt, NodeKey: keys[1], ClusterKeys: []ClusterKey{otherCK}, PeerKeys: map[NodeNum]PublicKey{2: keys[2].Public}}, framing.RefuseClusterKey},
		{"another node's number", 1, &Security{Mode: SecurityEncrypt, NodeKey: stranger, ClusterKeys: []ClusterKey{ck}, PeerKeys: map[NodeNum]PublicKey{2: keys[2].Public}}, framing.RefuseAuth},
		{"authenticate-only dialler", 1, &Security{Mode: SecurityAuthenticate, NodeKey: keys[1], ClusterKeys: []ClusterKey{ck}, PeerKeys: map[NodeNum]PublicKey{2: keys[2].Public}}, framing.RefuseSecurity},
		{"wrong key for the target", 1, &Security{Mode: SecurityEncrypt, NodeKey: keys[1], ClusterKeys: []ClusterKey{ck}, PeerKeys: map[NodeNum]PublicKey{2: stranger.Public}}, framing.RefuseAuth},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, rejectsBefore := failures(), target.m.handshakeRejects.Get()
			cfg := DefaultConfig()
			cfg.Node, cfg.Cluster = tc.num, "test"
			cfg.ListenAddr = fmt.Sprintf("127.0.1.%d:0", i+1)
			cfg.Peers = map[NodeNum]string{2: target.Addr()}
			cfg.Security, cfg.Insecure = tc.sec, tc.sec == nil
			n := startNode(t, cfg)
			_, err := n.Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("x"), nil)
			if !errors.Is(err, ErrHandshake) {
				t.Fatalf("got %v, want ErrHandshake", err)
			}
			refusedAs(t, err, tc.reason)
			// Counted before the refusal was written: no waiting.
			if got := target.m.handshakeRejects.Get() - rejectsBefore; got != 1 {
				t.Fatalf("%d rejections counted, want 1", got)
			}
			if failures() <= before {
				t.Fatal("rejection not counted")
			}
		})
	}
	// The member still gets in.
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// rawHandshake performs node 1's side of a handshake with node 2 by hand,
// returning the connection and the bytes it sent, for replay.
func rawHandshake(t *testing.T, sec *Security, addr string, confirm bool) (net.Conn, []byte, session) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	hello := framing.Hello{Version: framing.ProtocolVersion, From: 1, To: 2, Channel: uint8(ChanFirstService), Incarnation: 42, Cluster: "test"}
	hs, auth, err := sec.initiate(2, hello)
	if err != nil {
		t.Fatal(err)
	}
	hello.Auth = auth
	sent := frameBytes(t, framing.TypeHello, mustHello(t, &hello))
	if _, err := c.Write(sent); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hb [framing.HeaderSize]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		t.Fatal(err)
	}
	h, err := framing.DecodeHeader(hb[:], 4096)
	if err != nil || h.Status != 0 {
		t.Fatalf("ack %+v %v", h, err)
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(c, payload); err != nil {
		t.Fatal(err)
	}
	ack, err := framing.DecodeHello(payload)
	if err != nil {
		t.Fatal(err)
	}
	ss, conf, err := sec.finishInitiate(hs, ack)
	if err != nil {
		t.Fatal(err)
	}
	cf := frameBytes(t, framing.TypeConfirm, conf)
	if confirm {
		if _, err := c.Write(cf); err != nil {
			t.Fatal(err)
		}
	}
	return c, append(sent, cf...), ss
}

func frameBytes(t testing.TB, typ framing.Type, payload []byte) []byte {
	b := make([]byte, framing.HeaderSize, framing.HeaderSize+len(payload))
	h := framing.Header{Type: typ, Length: uint32(len(payload))}
	h.Encode(b)
	return append(b, payload...)
}

func mustHello(t testing.TB, h *framing.Hello) []byte {
	b, err := framing.AppendHello(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectClosed reads until the node closes c.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("connection not closed by the node: %v", err)
	}
}

func TestReplayedHandshakeRejected(t *testing.T) {
	nodes, ck, keys := startSecureCluster(t, SecurityEncrypt, 2)
	var served atomic.Int32
	mustRegister(t, nodes[1], Service{ID: echoSvc, Inline: true, Procs: []Handler{func(context.Context, *Request, *Response) error {
		served.Add(1)
		return nil
	}}})
	sec := securityFor(SecurityEncrypt, 1, ck, keys)
	_, recorded, _ := rawHandshake(t, sec, nodes[1].Addr(), true)

	before := nodes[1].m.authFailures.Get()
	// Replay the whole recorded handshake (hello and confirmation) on a new
	// connection: the node answers with a fresh ephemeral key, so the old
	// confirmation no longer decrypts.
	c, err := net.Dial("tcp", nodes[1].Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	request := frameBytes(t, framing.TypeRequest, []byte("sneaky"))
	request[4] = byte(echoSvc) // service id, little-endian
	request[6] = byte(ChanFirstService)
	if _, err := c.Write(append(recorded, request...)); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	eventually(t, "replay counted", func() bool { return nodes[1].m.authFailures.Get() > before })

	// Skipping the confirmation and sending a request straight away fails too.
	c2, _, _ := rawHandshake(t, sec, nodes[1].Addr(), false)
	if _, err := c2.Write(request); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c2)
	if served.Load() != 0 {
		t.Fatalf("a replayed or unconfirmed connection reached the service %d times", served.Load())
	}
}

func TestAuthenticatedPeerSendingGarbage(t *testing.T) {
	nodes, ck, keys := startSecureCluster(t, SecurityEncrypt, 3)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	sec := securityFor(SecurityEncrypt, 1, ck, keys)
	c, _, _ := rawHandshake(t, sec, nodes[1].Addr(), true)
	// Authenticated as node 1, now garbage instead of sealed records.
	if _, err := c.Write(bytes.Repeat([]byte{0xff, 0x00, 0x13}, 1000)); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	// Node 3 is unaffected.
	if got, err := nodes[2].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("fine"), nil); err != nil || string(got) != "fine" {
		t.Fatalf("other member after garbage: %q %v", got, err)
	}
}

func TestClusterKeyRotation(t *testing.T) {
	nodes, oldKey, keys := startSecureCluster(t, SecurityEncrypt, 3)
	for _, n := range nodes {
		mustRegister(t, n, Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	}
	newKey, _ := GenerateClusterKey()
	callAll := func(step string) {
		t.Helper()
		for _, a := range nodes {
			for _, b := range nodes {
				if a == b {
					continue
				}
				// New connections exercise the handshake with the current keys.
				a.NodeDown(b.Num(), errors.New("force a new handshake"))
				a.NodeUp(b.Num())
				eventually(t, fmt.Sprintf("%s: %d->%d", step, a.Num(), b.Num()), func() bool {
					_, err := a.Call(ctxFor(t, 5*time.Second), b.Num(), Method{Service: echoSvc}, []byte("x"), nil)
					return err == nil
				})
			}
		}
	}
	for _, n := range nodes {
		if err := n.SetClusterKeys(oldKey, newKey); err != nil {
			t.Fatal(err)
		}
	}
	callAll("both accepted, old used")
	for _, n := range nodes {
		if err := n.SetClusterKeys(newKey, oldKey); err != nil {
			t.Fatal(err)
		}
	}
	callAll("both accepted, new used")
	for _, n := range nodes {
		if err := n.SetClusterKeys(newKey); err != nil {
			t.Fatal(err)
		}
	}
	callAll("new only")
	// A node still on the old key is refused now.
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr = 1, "test", "127.0.1.9:0"
	cfg.Peers = map[NodeNum]string{2: nodes[1].Addr()}
	cfg.Security = securityFor(SecurityEncrypt, 1, oldKey, keys)
	stale := startNode(t, cfg)
	if _, err := stale.Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrHandshake) {
		t.Fatalf("old key after rotation: %v", err)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	nk, _ := GenerateNodeKey()
	path := filepath.Join(dir, "node.key")
	if err := WriteKeyFile(path, nk.Private); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyFile(path, nk.Private); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("overwrite: %v", err)
	}
	got, err := LoadNodeKey(path)
	if err != nil || got != nk {
		t.Fatalf("round trip: %v %v", got == nk, err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = LoadNodeKey(path)
	if !errors.Is(err, ErrKeyFile) || !bytes.Contains([]byte(err.Error()), []byte("chmod 600")) {
		t.Fatalf("group-readable key: %v", err)
	}
	bad := filepath.Join(dir, "bad.key")
	_ = os.WriteFile(bad, []byte("not hex\n"), 0o600)
	if _, err := LoadClusterKey(bad); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("malformed key: %v", err)
	}
	if _, err := LoadClusterKey(filepath.Join(dir, "missing")); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("missing key: %v", err)
	}
	pub, err := ParsePublicKey(nk.Public.String())
	if err != nil || pub != nk.Public {
		t.Fatalf("public key text round trip: %v", err)
	}
}

func TestSecurityConfigValidation(t *testing.T) {
	ck, keys := clusterKeys(t, 2)
	for name, s := range map[string]*Security{
		"no mode":        {NodeKey: keys[1], ClusterKeys: []ClusterKey{ck}},
		"no node key":    {Mode: SecurityEncrypt, ClusterKeys: []ClusterKey{ck}},
		"no cluster key": {Mode: SecurityEncrypt, NodeKey: keys[1]},
	} {
		cfg := DefaultConfig()
		cfg.Node, cfg.Cluster, cfg.Security = 1, "c", s
		if _, err := New(cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
