package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// The info service (issue 9 point 10): every node serves, on a reserved
// subservice of ChanCLMS, the list of its registered services with their
// versions and procedures, a health check, and an echo. A caller that got
// ErrProgUnavail or ErrProcUnavail can ask the peer what it does serve; an
// operator or a benchmark measures ICS round trips between two members
// with the echo (Ping; the admin endpoint's /v1/ping drives it).

// InfoService is where every node serves ListServices, Health and Ping:
// ChanCLMS subservice 5, the last of CI's six (CLMS takes 0, the cluster
// API 1, signal forwarding 2). A node whose MaxSubservices is under 6
// does not serve it.
var InfoService = ServiceOn(ChanCLMS, 5)

// Procedures of InfoService.
const (
	InfoProcList   uint32 = 0
	InfoProcHealth uint32 = 1
	InfoProcEcho   uint32 = 2 // the arguments back, unchanged
)

// infoServiceName is the info service's registered name.
const infoServiceName = "ics"

// ServiceInfo describes one service registered on a node.
type ServiceInfo struct {
	ID      ServiceID
	Name    string
	Version uint16   // 0: calls of any version are served
	Procs   []uint32 // the procedure numbers it serves, ascending
}

// HasProc reports whether the service serves procedure proc.
func (s *ServiceInfo) HasProc(proc uint32) bool {
	for _, p := range s.Procs {
		if p == proc {
			return true
		}
	}
	return false
}

// Health is a node's answer to Health.
type Health uint8

const (
	HealthUnknown  Health = iota // no answer: see the error
	HealthServing                // taking requests
	HealthDraining               // shutting down (Shutdown): taking no new requests
)

func (h Health) String() string {
	switch h {
	case HealthServing:
		return "serving"
	case HealthDraining:
		return "draining"
	}
	return "unknown"
}

var infoMethodList = Method{Service: InfoService, Proc: InfoProcList, Name: infoServiceName}
var infoMethodHealth = Method{Service: InfoService, Proc: InfoProcHealth, Name: infoServiceName}
var infoMethodEcho = Method{Service: InfoService, Proc: InfoProcEcho, Name: infoServiceName}

// ListServices asks node to what it has registered, the info service
// included, in (channel, subservice) order.
func (n *Node) ListServices(ctx context.Context, to NodeNum) ([]ServiceInfo, error) {
	reply, err := n.Call(ctx, to, infoMethodList, nil, nil)
	if err != nil {
		return nil, err
	}
	l, err := decodeServiceList(reply)
	if err != nil {
		return nil, fmt.Errorf("%w: service list from node %d: %v", ErrCantDecodeRes, to, err)
	}
	return l, nil
}

// Health asks node to whether it serves. A draining node answers
// HealthDraining with a nil error; an unreachable one HealthUnknown with
// the call's error.
func (n *Node) Health(ctx context.Context, to NodeNum) (Health, error) {
	reply, err := n.Call(ctx, to, infoMethodHealth, nil, nil)
	switch {
	case errors.Is(err, ErrShuttingDown):
		return HealthDraining, nil
	case err != nil:
		return HealthUnknown, err
	case len(reply) != 1 || Health(reply[0]) != HealthServing:
		return HealthUnknown, fmt.Errorf("%w: health from node %d: % x", ErrCantDecodeRes, to, reply)
	}
	return HealthServing, nil
}

// Ping sends payload to node to's echo and returns the echoed bytes
// appended to reply, as Call does: one ICS round trip, at the priority
// ctx carries (WithPriority; 0 travels on ChanCLMS, which CLMS's raft
// traffic shares, 1..4 on the priority channels). The payload is the
// caller's and is not kept; it is bounded by MaxPayload on both nodes.
// Only the length of the echo is checked, so that a bulk ping measures the
// transport rather than a comparison. With a reply buffer that fits and a
// ctx that cannot end, a ping allocates nothing.
func (n *Node) Ping(ctx context.Context, to NodeNum, payload, reply []byte) ([]byte, error) {
	out, err := n.Call(ctx, to, infoMethodEcho, payload, reply)
	if err != nil {
		return out, err
	}
	if got := len(out) - len(reply); got != len(payload) {
		return out, fmt.Errorf("%w: echo from node %d: %d bytes, sent %d", ErrCantDecodeRes, to, got, len(payload))
	}
	return out, nil
}

// registerInfo registers the info service; inline, as it only reads (the
// echo replies with the request's own bytes: no copy, no allocation).
func (n *Node) registerInfo() {
	if int(InfoService.Subservice()) >= n.cfg.MaxSubservices {
		return
	}
	err := n.Register(Service{ID: InfoService, Name: infoServiceName, Inline: true, Procs: []Handler{
		InfoProcList: func(_ context.Context, _ *Request, resp *Response) error {
			resp.Body = appendServiceList(resp.Body, n.services)
			return nil
		},
		InfoProcHealth: func(_ context.Context, _ *Request, resp *Response) error {
			// A draining node refuses requests before any handler runs:
			// the caller sees ErrShuttingDown, which Health reads as
			// HealthDraining.
			resp.Body = append(resp.Body, byte(HealthServing))
			return nil
		},
		InfoProcEcho: func(_ context.Context, req *Request, resp *Response) error {
			resp.Body = req.Args // read-only until sent; the engine's buffer, not kept
			return nil
		},
	}})
	if err != nil {
		n.log.Warn("info service not registered", "err", err)
	}
}

// appendServiceList encodes the services registered in services.
func appendServiceList(b []byte, services [][]atomic.Pointer[service]) []byte {
	var list []ServiceInfo
	for ch := range services {
		for ss := range services[ch] {
			s := services[ch][ss].Load()
			if s == nil {
				continue
			}
			info := ServiceInfo{ID: s.ID, Name: s.Name, Version: s.Version}
			for p, h := range s.Procs {
				if h != nil {
					info.Procs = append(info.Procs, uint32(p))
				}
			}
			list = append(list, info)
		}
	}
	return appendInfos(b, list)
}

// appendInfos encodes a service list: a uvarint count, then for each
// service its ID (4 bytes LE), version (2 bytes LE), name (uvarint length,
// bytes) and procedures (uvarint count, then each as a uvarint gap from
// the one before plus one, so that they ascend strictly and each list
// has one encoding). Procs must ascend strictly.
func appendInfos(b []byte, list []ServiceInfo) []byte {
	b = binary.AppendUvarint(b, uint64(len(list)))
	for _, s := range list {
		b = binary.LittleEndian.AppendUint32(b, uint32(s.ID))
		b = binary.LittleEndian.AppendUint16(b, s.Version)
		b = binary.AppendUvarint(b, uint64(len(s.Name)))
		b = append(b, s.Name...)
		b = binary.AppendUvarint(b, uint64(len(s.Procs)))
		next := uint64(0)
		for _, p := range s.Procs {
			b = binary.AppendUvarint(b, uint64(p)-next)
			next = uint64(p) + 1
		}
	}
	return b
}

var errServiceList = errors.New("malformed service list")

// decodeServiceList decodes appendServiceList's encoding. Every count is
// checked against the bytes left before anything is sized from it.
func decodeServiceList(d []byte) ([]ServiceInfo, error) {
	uvarint := func() (uint64, bool) {
		v, k := binary.Uvarint(d)
		if k <= 0 || (k > 1 && d[k-1] == 0) { // truncated, overflowing, or not the shortest form
			return 0, false
		}
		d = d[k:]
		return v, true
	}
	n, ok := uvarint()
	if !ok || n > uint64(len(d))/8 { // each entry takes at least 8 bytes
		return nil, errServiceList
	}
	list := make([]ServiceInfo, 0, n)
	for range n {
		if len(d) < 6 {
			return nil, errServiceList
		}
		s := ServiceInfo{ID: ServiceID(binary.LittleEndian.Uint32(d)), Version: binary.LittleEndian.Uint16(d[4:])}
		d = d[6:]
		l, ok := uvarint()
		if !ok || l > uint64(len(d)) || l > maxServiceName {
			return nil, errServiceList
		}
		s.Name, d = string(d[:l]), d[l:]
		np, ok := uvarint()
		if !ok || np > uint64(len(d)) { // each procedure takes at least a byte
			return nil, errServiceList
		}
		s.Procs = make([]uint32, 0, np)
		next := uint64(0)
		for range np {
			delta, ok := uvarint()
			if !ok || delta > 1<<32 || next+delta > 1<<32-1 {
				return nil, errServiceList
			}
			p := next + delta
			s.Procs = append(s.Procs, uint32(p))
			next = p + 1
		}
		list = append(list, s)
	}
	if len(d) != 0 {
		return nil, errServiceList
	}
	return list, nil
}
