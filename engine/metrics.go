package engine

import (
	"fmt"

	"github.com/VictoriaMetrics/metrics"
)

// nodeMetrics holds the counters a node updates on hot paths, resolved once
// so that an update is an atomic add and never a name lookup.
type nodeMetrics struct {
	set *metrics.Set

	rpcOK, rpcTimeout, rpcNodeDown, rpcRemoteErr, rpcSendErr, rpcTooMany *metrics.Counter
	rpcDuration                                                          *metrics.Histogram
	lateReplies, badFrames, handshakeRejects, peerLosses                 *metrics.Counter
	oneWaySent                                                           *metrics.Counter
}

func newNodeMetrics(set *metrics.Set, node NodeNum) *nodeMetrics {
	l := fmt.Sprintf(`node="%d"`, node)
	c := func(name, extra string) *metrics.Counter {
		if extra != "" {
			extra = "," + extra
		}
		return set.GetOrCreateCounter(fmt.Sprintf("%s{%s%s}", name, l, extra))
	}
	return &nodeMetrics{
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
	}
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
