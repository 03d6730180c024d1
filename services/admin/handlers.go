package admin

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/services/sigfwd"
)

// MaxBody bounds a POST body: the requests are a few fields.
const MaxBody = 64 << 10

func (s *Server) routes() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /metrics", s.metrics)
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	m.HandleFunc("GET /readyz", s.readyz)
	for path, h := range map[string]http.HandlerFunc{
		"/v1/status":      s.status,
		"/v1/members":     s.members,
		"/v1/transitions": s.transitions,
		"/v1/watch":       s.watchStream,
		"/v1/node/{n}":    s.node,
		"/v1/keysvc":      s.keysvc,
	} {
		m.HandleFunc(path, s.method(http.MethodGet, h))
	}
	// The mutating calls are POST only, so that a link, a prefetch or a
	// curl without -X cannot shut a node down.
	m.HandleFunc("/v1/shutdown", s.method(http.MethodPost, s.shutdown))
	m.HandleFunc("/v1/move", s.method(http.MethodPost, s.move))
	m.HandleFunc("/v1/signal", s.method(http.MethodPost, s.signal))
	m.HandleFunc("/v1/ping", s.method(http.MethodPost, s.ping))
	for pattern, h := range s.cfg.Extra {
		m.HandleFunc(pattern, h)
	}
	m.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.URL.Path+" (see docs/ADMIN.md)")
	})
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return m
}

// method answers 405 with a JSON body to any other method than want (GET
// also allows HEAD).
func (s *Server) method(want string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != want && !(want == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", want)
			s.fail(w, http.StatusMethodNotAllowed, "method_not_allowed", r.URL.Path+" wants "+want)
			return
		}
		h(w, r)
	}
}

// auth requires the bearer token on every request when there is one: 401
// without an Authorization header, 403 with a wrong token.
func (s *Server) auth(next http.Handler) http.Handler {
	if s.token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok:
			w.Header().Set("WWW-Authenticate", `Bearer realm="ci-admin"`)
			s.fail(w, http.StatusUnauthorized, "unauthorized", "this admin endpoint is not on loopback: send the token as Authorization: Bearer <token> (cluster --token-file)")
		case subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1:
			s.fail(w, http.StatusForbidden, "forbidden", "wrong bearer token")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func (s *Server) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.WritePrometheus(w)
	}
	engine.WriteProcessMetrics(w)
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	l := s.src.Local()
	if !l.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", l.NotReady)
		return
	}
	io.WriteString(w, "ready\n")
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	seq, ok := s.longPoll(w, r)
	if !ok {
		return
	}
	l := s.src.Local()
	ms, last := s.src.Membership()
	st := Status{
		Schema: SchemaVersion, Node: uint32(l.Node), Cluster: l.Cluster, Incarnation: FormatIncarnation(l.Incarnation),
		State: clms.StateNeverUp.String(), Master: uint32(l.Master), IsMaster: l.Master != 0 && l.Master == l.Node,
		Ready: l.Ready, NotReady: l.NotReady, Fenced: l.Fenced, LeaseValid: l.LeaseValid, RaftTerm: l.RaftTerm, LastTransition: uint64(last),
		Nodes: len(ms), Started: s.started.UTC(), Admin: s.Addr(), PID: l.PID, Seq: seq,
	}
	if !l.Ready && st.NotReady == "" {
		st.NotReady = "not ready"
	}
	for _, m := range ms {
		if m.Node == l.Node {
			st.State = m.State.String()
		}
		if m.State == clms.StateUp {
			st.MembersUp++
		}
	}
	s.reply(w, http.StatusOK, st)
}

func (s *Server) members(w http.ResponseWriter, _ *http.Request) {
	l := s.src.Local()
	ms, last := s.src.Membership()
	owned := s.owned()
	out := Members{Schema: SchemaVersion, From: uint32(l.Node), Master: uint32(l.Master), LastTransition: uint64(last), Members: make([]Member, len(ms))}
	for i, m := range ms {
		out.Members[i] = s.memberJSON(m, l.Master, owned)
	}
	s.reply(w, http.StatusOK, out)
}

func (s *Server) node(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseUint(r.PathValue("n"), 10, 32)
	if err != nil || n == 0 {
		s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("node %q: want a node number, 1 or more", r.PathValue("n")))
		return
	}
	ms, _ := s.src.Membership()
	for _, m := range ms {
		if m.Node == clms.NodeNum(n) {
			out := s.memberJSON(m, s.src.Local().Master, s.owned())
			out.Schema = SchemaVersion
			s.reply(w, http.StatusOK, out)
			return
		}
	}
	s.fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("node %d is not in the node table", n))
}

// owned maps each node to the key services it owns.
func (s *Server) owned() map[clms.NodeNum][]string {
	out := map[clms.NodeNum][]string{}
	if s.cfg.KeyServices == nil {
		return out
	}
	for _, k := range s.cfg.KeyServices.KeyServices() {
		if k.Owner != 0 {
			out[clms.NodeNum(k.Owner)] = append(out[clms.NodeNum(k.Owner)], k.Name)
		}
	}
	return out
}

func (s *Server) memberJSON(m clms.Member, master clms.NodeNum, owned map[clms.NodeNum][]string) Member {
	out := Member{
		Node: uint32(m.Node), State: m.State.String(), Incarnation: FormatIncarnation(m.Incarnation),
		Master: master != 0 && m.Node == master, KeyServices: nonNil(owned[m.Node]),
		LastChange: uint64(m.LastChange), Info: nodeInfoJSON(m.Info),
	}
	for _, e := range s.cfg.Nodes {
		if e.Num == m.Node {
			out.Address, out.Admin, out.MasterEligible = e.Address, e.Admin, e.MasterEligible
		}
	}
	return out
}

// sinceParam reads ?since=ID (default 0: from the first).
func sinceParam(r *http.Request) (clms.TransitionID, error) {
	v := r.URL.Query().Get("since")
	if v == "" {
		return 0, nil
	}
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("since=%q: want a transition id, 0 or more", v)
	}
	return clms.TransitionID(id), nil
}

func (s *Server) transitions(w http.ResponseWriter, r *http.Request) {
	since, err := sinceParam(r)
	if err != nil {
		s.fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	limit := s.cfg.MaxTransitions
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit=%q: want 1 or more", v))
			return
		}
		limit = min(n, limit)
	}
	_, last := s.src.Membership()
	ts := s.src.Transitions(since, limit)
	out := Transitions{Schema: SchemaVersion, Since: uint64(since), Last: uint64(last), Transitions: make([]Transition, len(ts))}
	for i, t := range ts {
		out.Transitions[i] = transitionJSON(t)
	}
	if len(ts) > 0 {
		out.Compacted = ts[0].ID != since+1
		out.More = ts[len(ts)-1].ID < last
	}
	s.reply(w, http.StatusOK, out)
}

// watchStream follows the committed transitions after since: every one
// exactly once, in id order, as newline-delimited JSON flushed line by
// line. It reads the source's log from the last id it wrote and waits on
// the source when it has caught up, so a transition committed while it
// writes is the next one it reads, never skipped.
func (s *Server) watchStream(w http.ResponseWriter, r *http.Request) {
	since, err := sinceParam(r)
	if err != nil {
		s.fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	select {
	case s.watch <- struct{}{}:
		defer func() { <-s.watch }()
	default:
		s.fail(w, http.StatusServiceUnavailable, "busy", fmt.Sprintf("%d watch streams already open on this node", s.cfg.MaxWatchers))
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	send := func(ev WatchEvent) bool {
		if err := enc.Encode(ev); err != nil {
			return false
		}
		if err := bw.Flush(); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	_, last := s.src.Membership()
	if !send(WatchEvent{Schema: SchemaVersion, Event: "hello", Node: uint32(s.src.Local().Node), Last: uint64(last)}) {
		return
	}
	ctx := r.Context()
	at := since
	for {
		ts := s.src.Transitions(at, s.cfg.MaxTransitions)
		if len(ts) > 0 && ts[0].ID != at+1 {
			send(WatchEvent{Event: "error", Code: "compacted", Error: fmt.Sprintf("transitions after %d are no longer kept (the oldest is %d): start again from /v1/members", at, ts[0].ID)})
			return
		}
		for _, t := range ts {
			tj := transitionJSON(t)
			if !send(WatchEvent{Event: "transition", Transition: &tj}) {
				return
			}
			at = t.ID
		}
		if len(ts) > 0 {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, s.cfg.Heartbeat)
		err := s.src.WaitTransition(wctx, at)
		cancel()
		switch {
		case ctx.Err() != nil:
			return // the client went away, or Close
		case errors.Is(err, context.DeadlineExceeded):
			_, last := s.src.Membership()
			if !send(WatchEvent{Event: "heartbeat", Last: uint64(last)}) {
				return
			}
		case err != nil:
			send(WatchEvent{Event: "error", Code: "internal", Error: err.Error()})
			return
		}
	}
}

func (s *Server) keysvc(w http.ResponseWriter, r *http.Request) {
	seq, ok := s.longPoll(w, r)
	if !ok {
		return
	}
	out := KeyServices{Schema: SchemaVersion, Services: []KeyService{}, Seq: seq}
	if s.cfg.KeyServices == nil {
		out.Reason = "this build has no key services yet (issue 12): nothing owns anything"
	} else {
		out.Available = true
		out.Services = nonNil(s.cfg.KeyServices.KeyServices())
	}
	s.reply(w, http.StatusOK, out)
}

// longPoll serves ?after=SEQ&wait=DUR of /v1/status and /v1/keysvc: with
// wait, it returns once the source's view sequence is above after, wait
// has passed, or the request ended (the client went away, or Close). It
// returns the sequence for the reply's "seq", read before the caller reads
// the view, so that a change made while the reply is built is above it and
// the next request with after=seq returns at once: no change falls between
// two requests. An after above the sequence is another process's (the node
// restarted): it returns at once. false: it answered (400, 501, 503), or
// the client is gone.
func (s *Server) longPoll(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("after=%q: want the seq of an earlier reply, 0 or more", v))
			return 0, false
		}
		after = n
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > s.cfg.MaxWait {
			s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("wait=%q: want a duration above 0 and at most %v, e.g. wait=10s", v, s.cfg.MaxWait))
			return 0, false
		}
		wait = d
	}
	vw, ok := s.src.(ViewWaiter)
	if !ok {
		if wait > 0 {
			s.fail(w, http.StatusNotImplemented, "not_implemented", "this node's view has no change sequence: ask without wait= (and poll)")
			return 0, false
		}
		return 0, true
	}
	if seq := vw.ViewSeq(); wait == 0 || seq != after {
		return seq, true
	}
	select {
	case s.watch <- struct{}{}:
		defer func() { <-s.watch }()
	default:
		s.fail(w, http.StatusServiceUnavailable, "busy", fmt.Sprintf("%d watch streams and long polls already open on this node", s.cfg.MaxWatchers))
		return 0, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	err := vw.WaitView(ctx, after)
	cancel()
	switch {
	case r.Context().Err() != nil:
		return 0, false // the client went away, or Close
	case err != nil && !errors.Is(err, context.DeadlineExceeded):
		s.fail(w, http.StatusServiceUnavailable, "unavailable", "waiting for a change: "+err.Error())
		return 0, false
	}
	return vw.ViewSeq(), true
}

func (s *Server) shutdown(w http.ResponseWriter, r *http.Request) {
	var req ShutdownRequest
	if !s.decode(w, r, &req, true) {
		return
	}
	self := s.src.Local().Node
	if req.Node != 0 && clms.NodeNum(req.Node) != self {
		s.fail(w, http.StatusConflict, "wrong_node", fmt.Sprintf("this is node %d's admin endpoint, not node %d's", self, req.Node))
		return
	}
	if s.cfg.Shutdown == nil {
		s.fail(w, http.StatusNotImplemented, "not_implemented", "this node cannot be shut down through its admin endpoint")
		return
	}
	reason := req.Reason
	if reason == "" {
		reason = "admin request"
	}
	s.cfg.Logger.Warn("planned shutdown asked on the admin endpoint", "reason", reason, "remote", r.RemoteAddr)
	s.reply(w, http.StatusAccepted, Accepted{Schema: SchemaVersion, Node: uint32(self), Action: "shutdown",
		Detail: "planned shutdown started: watch for the SHUTDOWN transition"})
	s.cfg.Shutdown(reason)
}

func (s *Server) move(w http.ResponseWriter, r *http.Request) {
	var req MoveRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	if s.cfg.KeyServices == nil {
		s.fail(w, http.StatusNotImplemented, "not_implemented", "this build has no key services yet (issue 12): there is nothing to move")
		return
	}
	if req.KeyService == "" || req.Node == 0 {
		s.fail(w, http.StatusBadRequest, "bad_request", "want {\"key_service\": NAME, \"node\": N}")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.CallTimeout)
	defer cancel()
	if err := s.cfg.KeyServices.Move(ctx, req.KeyService, clms.NodeNum(req.Node)); err != nil {
		s.callFailed(w, err)
		return
	}
	s.reply(w, http.StatusOK, Accepted{Schema: SchemaVersion, Node: uint32(s.src.Local().Node), Action: "move",
		Detail: fmt.Sprintf("%s is now served by node %d", req.KeyService, req.Node)})
}

func (s *Server) signal(w http.ResponseWriter, r *http.Request) {
	var req SignalRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	if s.cfg.Signaller == nil {
		s.fail(w, http.StatusNotImplemented, "not_implemented", "this node does not forward signals")
		return
	}
	if req.Node == 0 || req.Signal == "" || (req.Handler == "") == (req.PID == 0) {
		s.fail(w, http.StatusBadRequest, "bad_request", "want {\"node\": N, \"signal\": S} and one of \"handler\" or \"pid\"")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.CallTimeout)
	defer cancel()
	var err error
	if req.Handler != "" {
		err = s.cfg.Signaller.Signal(ctx, engine.NodeNum(req.Node), req.Handler, req.Signal, req.Arg)
	} else {
		sig, perr := ParseSignal(req.Signal)
		if perr != nil {
			s.fail(w, http.StatusBadRequest, "bad_request", perr.Error())
			return
		}
		err = s.cfg.Signaller.Kill(ctx, engine.NodeNum(req.Node), req.PID, sig)
	}
	s.cfg.Logger.Info("signal forwarded on an admin request", "to", req.Node, "handler", req.Handler, "pid", req.PID,
		"signal", req.Signal, "err", err, "remote", r.RemoteAddr)
	if err != nil {
		s.callFailed(w, err)
		return
	}
	s.reply(w, http.StatusOK, Accepted{Schema: SchemaVersion, Node: uint32(s.src.Local().Node), Action: "signal",
		Detail: fmt.Sprintf("%s delivered on node %d", req.Signal, req.Node)})
}

// ParseSignal reads SIGTERM, TERM or 15.
func ParseSignal(v string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(v); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(v)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q: want a name (TERM, SIGHUP) or a number", v)
}

// callFailed answers a failed forwarded call with the status its cause
// means.
func (s *Server) callFailed(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, sigfwd.ErrRefused):
		s.fail(w, http.StatusForbidden, "refused", err.Error())
	case errors.Is(err, sigfwd.ErrNotFound):
		s.fail(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, sigfwd.ErrInvalid):
		s.fail(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, engine.ErrNodeDown), errors.Is(err, engine.ErrUnknownHost):
		s.fail(w, http.StatusServiceUnavailable, "node_down", err.Error())
	case errors.Is(err, engine.ErrTimedOut), errors.Is(err, context.DeadlineExceeded):
		s.fail(w, http.StatusGatewayTimeout, "timed_out", err.Error())
	case errors.Is(err, ErrNotImplemented):
		s.fail(w, http.StatusNotImplemented, "not_implemented", err.Error())
	default:
		s.fail(w, http.StatusBadGateway, "failed", err.Error())
	}
}

// decode reads a JSON body into v; an empty body is fine when optional.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil || (optional && errors.Is(err, io.EOF)) {
		return true
	}
	s.fail(w, http.StatusBadRequest, "bad_request", "request body: "+err.Error())
	return false
}

func (s *Server) reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		s.cfg.Logger.Debug("admin reply not written", "err", err)
	}
}

func (s *Server) fail(w http.ResponseWriter, code int, short, msg string) {
	s.reply(w, code, Error{Schema: SchemaVersion, Error: msg, Code: short})
}
