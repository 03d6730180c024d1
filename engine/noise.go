package engine

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// The Noise key exchange of an accepted hello costs ~0.3 ms of CPU, which
// anyone who has seen a hello (the cluster key's id is in clear) can make
// the node spend. So it never runs on a connection's reader, where it would
// delay the connection (with event loops, every connection of the loop):
// handshake workers do it, fed by a short
// queue, and only as often as Config.MaxHandshakesPerSecond allows.
// Members dialling from their configured address have a budget of their
// own, which strangers cannot spend.

// noiseJob is one hello whose key exchange a handshake worker computes.
type noiseJob struct {
	c          *conn
	sec        *Security
	hello, ack framing.Hello
}

// noiseQueue bounds the hellos waiting for a worker: beyond it, the
// workers are behind by far more than a connection burst of a whole
// cluster, and refusing is cheaper than queueing.
const noiseQueue = 256

// testHookNoise, when set, runs in a worker before each key exchange.
var testHookNoise atomic.Pointer[func()]

// startNoiseWorkers starts the handshake workers: half the Ps, so that a
// flood of hellos leaves the event loops CPU even when it is admitted.
func (n *Node) startNoiseWorkers() {
	for i := 0; i < max(1, runtime.GOMAXPROCS(0)/2); i++ {
		n.goOwned(n.noiseWorker)
	}
}

func (n *Node) noiseWorker() {
	for {
		select {
		case <-n.ctx.Done():
			return
		case j := <-n.noiseJobs:
			n.respondHello(j)
		}
	}
}

var errHandshakeRate = fmt.Errorf("%w: too many handshakes; try again", ErrHandshake)

// queueNoise hands a checked hello to the handshake workers, on the loop.
func (n *Node) queueNoise(c *conn, sec *Security, hello, ack framing.Hello) error {
	bucket := &n.noiseStrangers
	if n.fromMemberAddress(c) {
		bucket = &n.noiseMembers
	}
	if !bucket.take(time.Now()) {
		n.m.limitHandshakeRate.Inc()
		return n.rejectHello(c, fmt.Errorf("%w (over %d/s)", errHandshakeRate, n.cfg.MaxHandshakesPerSecond))
	}
	hello.Auth = bytes.Clone(hello.Auth) // it aliases the loop's buffer
	select {
	case n.noiseJobs <- noiseJob{c: c, sec: sec, hello: hello, ack: ack}:
		return nil // the answer comes from the worker; the confirmation after it
	default:
		n.m.limitHandshakeRate.Inc()
		return n.rejectHello(c, fmt.Errorf("%w (%d waiting)", errHandshakeRate, noiseQueue))
	}
}

// fromMemberAddress reports whether c comes from the address configured
// for the member its hello names.
func (n *Node) fromMemberAddress(c *conn) bool {
	host, _, err := net.SplitHostPort(*c.peer.addr.Load())
	if err != nil {
		return false
	}
	a, b := net.ParseIP(host), net.ParseIP(c.source)
	return a != nil && b != nil && a.Equal(b)
}

// respondHello is a worker's half of acceptHello: check the dialler's
// Noise message and answer it.
func (n *Node) respondHello(j noiseJob) {
	if h := testHookNoise.Load(); h != nil {
		(*h)()
	}
	c := j.c
	if c.wclosedFast() {
		return // shed or timed out while it waited
	}
	ss, auth, err := j.sec.respond(c.peer.num, j.hello, j.ack)
	if err != nil {
		n.m.authFailures.Inc()
		err = n.rejectHello(c, fmt.Errorf("node %d: %w", c.peer.num, err))
		n.log.Warn("closing connection", "remote", c.remote, "peer", c.peer.num, "err", err)
		c.close()
		return
	}
	j.ack.Auth = auth
	n.namedMember(c)
	// Before the answer goes out: the confirmation that follows it finds it.
	c.session.Store(&ss)
	payload, _ := framing.AppendHello(nil, &j.ack)
	h := framing.Header{Type: framing.TypeHelloAck}
	if err := c.send(nil, &h, payload); err != nil {
		c.close()
	}
}

// tokenBucket allows rate events a second, in bursts of up to rate.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

func (b *tokenBucket) init(rate int) {
	b.rate, b.tokens = float64(rate), float64(rate)
}

func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.rate, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
