package engine

import (
	"errors"
	"fmt"

	"github.com/clusterinfra/ci/framing"
)

// Refusals. An acceptor that will not take a hello answers with a
// framing.Refusal (a reason, its protocol version, a short text) before it
// closes, so the dialler's error says what is wrong instead of "node down":
// another version (ErrVersMismatch), another cluster, an unknown node,
// differing security modes, a declared-down node. The text says only what
// leaks no secret: never the acceptor's cluster name or keys, and for a
// failed key check only that it failed (the acceptor's log says which).

// HandshakeError is a connection a peer refused, as the dialler sees it.
// It wraps ErrVersMismatch when the peer speaks another protocol version,
// ErrHandshake otherwise.
type HandshakeError struct {
	Node    NodeNum              // the peer that refused
	Addr    string               // its address
	Reason  framing.RefuseReason // why, as the peer said
	Version uint16               // the protocol version the peer speaks
	Detail  string               // the peer's text, if any
}

func (e *HandshakeError) Error() string {
	msg := fmt.Sprintf("ics: node %d at %s refused the connection (%s)", e.Node, e.Addr, e.Reason)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	switch e.Reason {
	case framing.RefuseVersion:
		msg += fmt.Sprintf(" [it speaks protocol version %d, this node %d]", e.Version, framing.ProtocolVersion)
	case framing.RefuseAuth:
		msg += fmt.Sprintf(" [the node key node %d holds for us is not ours, or the one we hold for it (Security.PeerKeys[%d]) is not its own; node %d's log says which check failed]", e.Node, e.Node, e.Node)
	case framing.RefuseClusterKey:
		msg += " [our first cluster key is not among those it accepts: see Node.SetClusterKeys for rotation]"
	}
	return msg
}

func (e *HandshakeError) Unwrap() []error {
	switch e.Reason {
	case framing.RefuseVersion:
		return []error{ErrVersMismatch}
	case framing.RefuseDeclaredDown:
		// CLMS fences on it: the peer's membership has us down.
		return []error{ErrHandshake, ErrDeclaredDown}
	}
	return []error{ErrHandshake}
}

// refusal is an acceptor's reason to refuse, with the text the dialler may
// see; it wraps the full reason, which only the acceptor's log shows.
type refusal struct {
	reason framing.RefuseReason
	detail string
	err    error
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// refused builds a refusal: reason and detail for the dialler, err (which
// may say more) for this node's log.
func refused(reason framing.RefuseReason, detail string, err error) error {
	return &refusal{reason: reason, detail: detail, err: err}
}

// refusalFor picks what to tell the dialler about why: a refusal built by
// refused says it; the handshake's own errors map to their reason.
func refusalFor(why error) framing.Refusal {
	r := framing.Refusal{Version: framing.ProtocolVersion}
	var rf *refusal
	switch {
	case errors.As(why, &rf):
		r.Reason, r.Detail = rf.reason, rf.detail
	case errors.Is(why, errHandshakeRate):
		r.Reason, r.Detail = framing.RefuseBusy, "too many handshakes at once; try again"
	case errors.Is(why, errModeMismatch), errors.Is(why, errNoAuth):
		r.Reason, r.Detail = framing.RefuseSecurity, trimErr(why)
	case errors.Is(why, errUnknownKey):
		r.Reason, r.Detail = framing.RefuseClusterKey, trimErr(why)
	case errors.Is(why, errNoPeerKey):
		r.Reason, r.Detail = framing.RefuseUnknownNode, trimErr(why)
	case errors.Is(why, errHandshake), errors.Is(why, errBadConfirm), errors.Is(why, ErrAuth):
		r.Reason = framing.RefuseAuth // no detail: which key is wrong is for our log only
	case errors.Is(why, framing.ErrBadHello):
		r.Reason, r.Detail = framing.RefuseBadHello, trimErr(why)
	case errors.Is(why, ErrNodeDown):
		r.Reason = framing.RefuseDeclaredDown
	}
	return r
}

// trimErr is an error's text for a refusal, cut to what a refusal carries.
func trimErr(err error) string {
	s := err.Error()
	if len(s) > framing.MaxRefusalDetail {
		s = s[:framing.MaxRefusalDetail]
	}
	return s
}
