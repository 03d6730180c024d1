package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterinfra/ci/engine"
)

// FlowClient is the client side of the flow benchmark: the client node,
// which sends the bulk messages and the priority probes, and the raw TCP
// stream to the same server process.
type FlowClient struct {
	n      *engine.Node
	server engine.NodeNum
	window int
	raw    net.Conn // nil until Connect

	// sent is every bulk byte the client node has sent, warm-ups included:
	// the total a sync asks the server to have counted.
	sent atomic.Int64
	// rawSent is the same for the raw stream.
	rawSent int64
}

// NewFlowClient starts the client node alone, so that its address can be
// given to the server (StartFlowServer, or cibench serve --peer=flow in
// another process) before Connect.
func NewFlowClient(cfg FlowConfig) (*FlowClient, error) {
	server, client := cfg.nodes()
	n, err := engine.New(cfg.engineConfig(client, ""))
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		if n != nil {
			err = errors.Join(err, n.Close())
		}
		return nil, fmt.Errorf("bench: flow client node: %w", err)
	}
	return &FlowClient{n: n, server: server, window: cfg.window()}, nil
}

// Addr is the client node's listen address.
func (c *FlowClient) Addr() string { return c.n.Addr() }

// Node is the client node, for its metrics.
func (c *FlowClient) Node() *engine.Node { return c.n }

// Window is the credit window the server grants the bulk channel.
func (c *FlowClient) Window() int { return c.window }

// Connect points the client node at the server node's address, asks the
// server for its raw address and opens the raw stream.
func (c *FlowClient) Connect(ctx context.Context, serverAddr string) error {
	if err := c.n.SetPeer(c.server, serverAddr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addr, err := c.n.Call(ctx, c.server, flowInfoMethod, nil, nil)
	if err != nil {
		return fmt.Errorf("bench: flow server info: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", string(addr))
	if err != nil {
		return fmt.Errorf("bench: flow raw stream: %w", err)
	}
	c.raw = conn
	return nil
}

// ServerMetrics returns the server node's metrics in the Prometheus text
// format.
func (c *FlowClient) ServerMetrics(ctx context.Context) (string, error) {
	b, err := c.n.Call(ctx, c.server, flowMetricsMethod, nil, nil)
	return string(b), err
}

// Close closes the raw stream and the client node.
func (c *FlowClient) Close() error {
	var err error
	if c.raw != nil {
		err = c.raw.Close()
	}
	return errors.Join(err, c.n.Close())
}

// BulkResult is one bulk transfer: how many bytes the server counted and
// how long it took from the first message to the sync that confirmed the
// last.
type BulkResult struct {
	Bytes     int64         `json:"bytes"`
	Messages  int64         `json:"messages"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	MBPerSec  float64       `json:"mb_per_sec"` // 10^6 bytes per second
	ClientCPU time.Duration `json:"client_cpu_ns"`
	ServerCPU time.Duration `json:"server_cpu_ns"`
	// CreditWaits is how many sends waited for credit (ICS only): the
	// engine's ci_ics_credit_waits_total on the bulk channel.
	CreditWaits int64 `json:"credit_waits,omitempty"`
}

func (r *BulkResult) finish() {
	if r.Elapsed > 0 {
		r.MBPerSec = float64(r.Bytes) / r.Elapsed.Seconds() / 1e6
	}
}

// bulkStop says when senders stop: length after begin if set, or when
// stop is.
type bulkStop struct {
	// length is how long sending runs. It is counted from begin, after the
	// sync that starts a phase: counted from before it, a sync slower than
	// the phase (a loaded machine, the race detector) left no time to send
	// and the phase moved nothing.
	length   time.Duration
	deadline time.Time // set by begin, before any sender starts
	stop     atomic.Bool
}

// begin starts the clock; senders start after it.
func (s *bulkStop) begin() {
	if s.length > 0 {
		s.deadline = time.Now().Add(s.length)
	}
}

func (s *bulkStop) done() bool {
	return s.stop.Load() || (!s.deadline.IsZero() && !time.Now().Before(s.deadline))
}

// rawBulk writes size-byte frames on the raw stream until st says stop,
// then syncs. saturated, if not nil, is closed as for icsBulk.
func (c *FlowClient) rawBulk(size int, st *bulkStop, saturated chan<- struct{}) (BulkResult, error) {
	if c.raw == nil {
		return BulkResult{}, fmt.Errorf("bench: flow client not connected")
	}
	start, err := c.rawSync()
	if err != nil {
		return BulkResult{}, err
	}
	frame := make([]byte, 4+size)
	binary.BigEndian.PutUint32(frame, uint32(size))
	fillPattern(frame[4:])
	var res BulkResult
	st.begin()
	cpu0, t0 := processCPU(), time.Now()
	for !st.done() {
		if _, err := c.raw.Write(frame); err != nil {
			return res, fmt.Errorf("bench: raw stream: %w", err)
		}
		c.rawSent += int64(size)
		res.Messages++
		if saturated != nil && res.Messages*int64(size) >= 2*int64(c.window) {
			close(saturated)
			saturated = nil
		}
	}
	end, err := c.rawSync()
	res.Elapsed, res.ClientCPU = time.Since(t0), processCPU()-cpu0
	if err != nil {
		return res, err
	}
	res.Bytes, res.ServerCPU = end.bytes-start.bytes, end.cpu-start.cpu
	res.finish()
	return res, nil
}

// rawSync sends a zero-length frame and reads the server's count, which
// must be every byte written so far.
func (c *FlowClient) rawSync() (flowStat, error) {
	var buf [flowStatSize]byte
	if _, err := c.raw.Write(buf[:4]); err != nil {
		return flowStat{}, fmt.Errorf("bench: raw sync: %w", err)
	}
	if _, err := io.ReadFull(c.raw, buf[:]); err != nil {
		return flowStat{}, fmt.Errorf("bench: raw sync: %w", err)
	}
	st, err := parseFlowStat(buf[:])
	if err == nil && st.bytes != c.rawSent {
		err = fmt.Errorf("%w: raw server counted %d bytes, client wrote %d", ErrFlowCount, st.bytes, c.rawSent)
	}
	return st, err
}

// icsBulk sends size-byte one-way messages on the throttled bulk channel
// from senders goroutines until st says stop, then syncs. If saturated is
// not nil it is closed once two windows have been sent: the channel is full
// and credit has come back at least once.
func (c *FlowClient) icsBulk(ctx context.Context, size, senders int, st *bulkStop, saturated chan<- struct{}) (BulkResult, error) {
	start, err := c.icsSync(ctx)
	if err != nil {
		return BulkResult{}, err
	}
	waits0 := c.creditWaitCount()
	payload := make([]byte, size)
	fillPattern(payload)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg       sync.WaitGroup
		msgs     atomic.Int64
		sent     atomic.Int64
		satOnce  sync.Once
		satBytes = 2 * int64(c.window)
	)
	st.begin()
	cpu0, t0 := processCPU(), time.Now()
	for range senders {
		wg.Go(func() {
			for !st.done() {
				// Send copies what it cannot write at once, so one payload
				// serves every sender.
				if err := c.n.Send(ctx, c.server, flowSinkMethod, payload); err != nil {
					cancel(err)
					return
				}
				c.sent.Add(int64(size))
				msgs.Add(1)
				if sent.Add(int64(size)) >= satBytes && saturated != nil {
					satOnce.Do(func() { close(saturated) })
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return BulkResult{}, fmt.Errorf("bench: ics bulk: %w", err)
	}
	end, err := c.icsSync(ctx)
	res := BulkResult{Messages: msgs.Load(), Elapsed: time.Since(t0), ClientCPU: processCPU() - cpu0}
	if err != nil {
		return res, err
	}
	res.Bytes, res.ServerCPU = end.bytes-start.bytes, end.cpu-start.cpu
	res.CreditWaits = c.creditWaitCount() - waits0
	res.finish()
	return res, nil
}

// icsSync asks the server, on the bulk channel behind the data, for its
// count once it has counted every byte sent so far.
func (c *FlowClient) icsSync(ctx context.Context) (flowStat, error) {
	ctx, cancel := context.WithTimeout(ctx, flowSyncTimeout+5*time.Second)
	defer cancel()
	want := c.sent.Load()
	reply, err := c.n.Call(ctx, c.server, flowSyncMethod, binary.BigEndian.AppendUint64(nil, uint64(want)), nil)
	if err != nil {
		return flowStat{}, fmt.Errorf("bench: ics sync: %w", err)
	}
	st, err := parseFlowStat(reply)
	if err == nil && st.bytes != want {
		err = fmt.Errorf("%w: ics server counted %d bytes, client sent %d", ErrFlowCount, st.bytes, want)
	}
	return st, err
}

// creditWaitCount reads the client node's credit waits on the bulk channel.
func (c *FlowClient) creditWaitCount() int64 {
	var b bytes.Buffer
	c.n.Metrics().WritePrometheus(&b)
	return int64(seriesValue(b.String(), c.metricName("ci_ics_credit_waits_total")))
}

// seriesValue is the value of one series (name and labels, as the engine
// writes them) in a scrape, 0 if absent. The engine's series live behind
// the set's metrics writer, so a scrape is the way to read them.
func seriesValue(scrape, series string) float64 {
	for line := range strings.Lines(scrape) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// metricName is an engine per-connection metric of the client node for the
// bulk channel.
func (c *FlowClient) metricName(name string) string {
	return fmt.Sprintf(`%s{node="%d",peer="%d",channel="%s"}`, name, c.n.Num(), c.server,
		engine.Channel(flowBulk.Channel()))
}

// probe makes size-byte echo calls at priority prio, one at a time, for d,
// and returns their latencies.
func (c *FlowClient) probe(ctx context.Context, d time.Duration, size int, prio uint8) (*Hist, error) {
	req, err := NewRequest(size, size)
	if err != nil {
		return nil, err
	}
	pctx := engine.WithPriority(ctx, prio)
	resp := make([]byte, 0, size)
	h := NewHist()
	deadline := time.Now().Add(d)
	for {
		t0 := time.Now()
		resp, err = c.n.Call(pctx, c.server, flowEchoMethod, req, resp[:0])
		t1 := time.Now()
		if err != nil {
			return h, fmt.Errorf("bench: priority probe: %w", err)
		}
		if len(resp) != size {
			return h, fmt.Errorf("%w: %d bytes, want %d", ErrBadReply, len(resp), size)
		}
		h.Record(t1.Sub(t0))
		if !t1.Before(deadline) {
			return h, nil
		}
	}
}

// loaded runs the probe while icsBulk saturates the bulk channel (or, with
// raw, while rawBulk saturates the raw stream): the probe starts once the
// bulk transfer is in full swing and the bulk stops when the probe is done.
func (c *FlowClient) loaded(ctx context.Context, raw bool, d time.Duration, size, senders, probeSize int, prio uint8) (*Hist, BulkResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		st        bulkStop
		saturated = make(chan struct{})
		bulk      BulkResult
		bulkErr   error
		done      = make(chan struct{})
	)
	go func() {
		defer close(done)
		if raw {
			// A failing probe cannot interrupt a blocked write; the stop
			// flag ends the transfer within one message.
			bulk, bulkErr = c.rawBulk(size, &st, saturated)
			return
		}
		bulk, bulkErr = c.icsBulk(ctx, size, senders, &st, saturated)
	}()
	select {
	case <-saturated:
	case <-done:
		if bulkErr == nil {
			bulkErr = errors.New("bench: bulk transfer ended before saturating the channel")
		}
		return nil, bulk, bulkErr
	}
	h, err := c.probe(ctx, d, probeSize, prio)
	st.stop.Store(true)
	if err != nil {
		cancel()
	}
	<-done
	return h, bulk, errors.Join(err, bulkErr)
}

// fillPattern fills b with bytes that are not all zero, so nothing on the
// way can take a shortcut.
func fillPattern(b []byte) {
	for i := range b {
		b[i] = byte(i*31 + 7)
	}
}
