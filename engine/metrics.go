package engine

import (
	"fmt"

	"github.com/clusterinfra/ci/framing"

	"github.com/VictoriaMetrics/metrics"
)

// nodeMetrics holds the counters a node updates on hot paths, resolved once
// so that an update is an atomic add and never a name lookup.
type nodeMetrics struct {
	set *metrics.Set

	rpcOK, rpcTimeout, rpcNodeDown, rpcRemoteErr, rpcSendErr, rpcTooMany *metrics.Counter
	rpcDuration                                                          *metrics.Histogram
	lateReplies, badFrames, handshakeRejects, peerLosses                 *metrics.Counter
	oneWaySent, staleReplies, dialBackoffRefusals                        *metrics.Counter

	framesOutByPrio, framesInByPrio [framing.MaxPriority + 1]*metrics.Counter

	authFailures                                        *metrics.Counter
	limitFrameSize, limitUnauthPerSource, limitInflight *metrics.Counter
	limitHandshakeTimeout, limitDecompress              *metrics.Counter
}

func newNodeMetrics(set *metrics.Set, node NodeNum) *nodeMetrics {
	l := fmt.Sprintf(`node="%d"`, node)
	c := func(name, extra string) *metrics.Counter {
		if extra != "" {
			extra = "," + extra
		}
		return set.GetOrCreateCounter(fmt.Sprintf("%s{%s%s}", name, l, extra))
	}
	m := &nodeMetrics{
		set:              set,
		rpcOK:            c("ci_ics_rpcs_total", `outcome="ok"`),
		rpcTimeout:       c("ci_ics_rpcs_total", `outcome="timeout"`),
		rpcNodeDown:      c("ci_ics_rpcs_total", `outcome="node_down"`),
		rpcRemoteErr:     c("ci_ics_rpcs_total", `outcome="remote_error"`),
		rpcSendErr:       c("ci_ics_rpcs_total", `outcome="send_error"`),
		rpcTooMany:       c("ci_ics_rpcs_total", `outcome="too_many"`),
		rpcDuration:      set.GetOrCreateHistogram(fmt.Sprintf("ci_ics_rpc_duration_seconds{%s}", l)),
		lateReplies:      c("ci_ics_late_replies_total", ""),
		badFrames:        c("ci_ics_bad_frames_total", ""),
		handshakeRejects: c("ci_ics_handshake_rejects_total", ""),
		peerLosses:       c("ci_ics_peer_losses_total", ""),
		oneWaySent:       c("ci_ics_oneway_sent_total", ""),
		staleReplies:     c("ci_ics_stale_replies_dropped_total", ""), // replies for a link that ended
		// calls failed at once because the peer's last dial failed and its backoff runs
		dialBackoffRefusals: c("ci_ics_dial_backoff_refusals_total", ""),
	}
	m.authFailures = c("ci_ics_auth_failures_total", "")
	m.limitFrameSize = c("ci_ics_limit_hits_total", `limit="frame_size"`)
	m.limitDecompress = c("ci_ics_limit_hits_total", `limit="decompressed_size"`)
	m.limitHandshakeTimeout = c("ci_ics_limit_hits_total", `limit="handshake_timeout"`)
	m.limitUnauthPerSource = c("ci_ics_limit_hits_total", `limit="unauth_per_source"`)
	m.limitInflight = c("ci_ics_limit_hits_total", `limit="inflight_per_peer"`)
	for p := range m.framesOutByPrio {
		m.framesOutByPrio[p] = c("ci_ics_requests_by_priority_total", fmt.Sprintf(`direction="out",priority="%d"`, p))
		m.framesInByPrio[p] = c("ci_ics_requests_by_priority_total", fmt.Sprintf(`direction="in",priority="%d"`, p))
	}
	return m
}

// connMetrics are per channel and peer.
type connMetrics struct {
	framesIn, bytesIn, framesOut, bytesOut *metrics.Counter
}

func (m *nodeMetrics) forConn(node, peer NodeNum, ch Channel) connMetrics {
	l := fmt.Sprintf(`{node="%d",peer="%d",channel="%s"}`, node, peer, ch)
	return connMetrics{
		framesIn:  m.set.GetOrCreateCounter("ci_ics_frames_in_total" + l),
		bytesIn:   m.set.GetOrCreateCounter("ci_ics_bytes_in_total" + l),
		framesOut: m.set.GetOrCreateCounter("ci_ics_frames_out_total" + l),
		bytesOut:  m.set.GetOrCreateCounter("ci_ics_bytes_out_total" + l),
	}
}

// newSendCredit builds a dialler's credit state with its counters, and
// exposes the credit available on the peer's current connection.
func (m *nodeMetrics) newSendCredit(n *Node, p *peer, ch Channel) *sendCredit {
	l := fmt.Sprintf(`{node="%d",peer="%d",channel="%s"}`, n.cfg.Node, p.num, ch)
	m.set.GetOrCreateGauge("ci_ics_credit_available_bytes"+l, func() float64 {
		if c := p.out[ch].Load(); c != nil && c.credit != nil {
			return float64(c.credit.avail.Load())
		}
		return 0
	})
	return &sendCredit{
		waits:     m.set.GetOrCreateCounter("ci_ics_credit_waits_total" + l),
		throttled: m.set.GetOrCreateCounter("ci_ics_throttled_total" + l),
	}
}

// watchReceiveWindow exposes, per peer and channel, the window granted and
// the bytes waiting for server handles, read at scrape time.
func (m *nodeMetrics) watchReceiveWindow(n *Node, p *peer, ch Channel) {
	l := fmt.Sprintf(`{node="%d",peer="%d",channel="%s"}`, n.cfg.Node, p.num, ch)
	m.set.GetOrCreateGauge("ci_ics_credit_window_bytes"+l, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		var w int64
		for c := range p.inbound {
			if c.channel == ch && c.recv != nil {
				w += c.recv.window.Load()
			}
		}
		return float64(w)
	})
	m.set.GetOrCreateGauge("ci_ics_credit_held_bytes"+l, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		var held int64
		for c := range p.inbound {
			if c.channel == ch && c.recv != nil {
				held += c.recv.held.Load()
			}
		}
		return float64(held)
	})
}

// watchPool exposes a service's server handles, busy and idle.
func (m *nodeMetrics) watchPool(node NodeNum, pool *handlePool) {
	l := fmt.Sprintf(`node="%d",service="%s"`, node, pool.name)
	m.set.GetOrCreateGauge(fmt.Sprintf(`ci_ics_handles{%s,state="busy"}`, l), func() float64 {
		return float64(pool.running.Load())
	})
	m.set.GetOrCreateGauge(fmt.Sprintf(`ci_ics_handles{%s,state="idle"}`, l), func() float64 {
		return float64(pool.started.Load() - pool.running.Load())
	})
	m.set.GetOrCreateGauge(fmt.Sprintf(`ci_ics_handles_queued{%s}`, l), func() float64 {
		return float64(pool.queued.Load())
	})
}
