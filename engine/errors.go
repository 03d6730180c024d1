package engine

import (
	"errors"
	"fmt"
	"strings"
)

// RPC errors, after CI's CLUSTER_RPC_* codes. Every error a call (Call, Go,
// GoFunc, Send) returns answers errors.Is with exactly one of them, and
// Code gives its Status: one error model, like gRPC's status.Code.
//
//	sentinel             Status                    CI name                           when
//	ErrTimedOut          StatusTimedOut            CLUSTER_RPC_TIMEDOUT              the caller's ctx deadline passed
//	ErrIntr              StatusIntr                CLUSTER_RPC_INTR                  the caller's ctx was cancelled
//	ErrThrottled         StatusThrottled           (CI: throttled)                   ctx ended waiting for credit or a full queue
//	ErrNodeDown          StatusNodeDown            (CI: node down)                   the peer is unreachable, restarted or declared down
//	ErrShuttingDown      StatusShuttingDown        (new)                             the peer is draining (Node.Shutdown): it takes no new calls
//	ErrTooManyCalls      StatusTooManyCalls        (new)                             this node's client handle table is full
//	ErrBusy              StatusBusy                (new)                             the peer refused: too many requests in flight from us
//	ErrClosed            StatusClosed              (new)                             this node was closed
//	ErrUnknownHost       StatusUnknownHost         CLUSTER_RPC_UNKNOWNHOST           the node is not a configured peer
//	ErrProgUnavail       StatusProgUnavail         CLUSTER_RPC_PROGUNAVAIL           no such service on the peer (see ListServices)
//	ErrProgVersMismatch  StatusProgVersMismatch    CLUSTER_RPC_PROGVERSMISMATCH      the service has another stub version
//	ErrProcUnavail       StatusProcUnavail         CLUSTER_RPC_PROCUNAVAIL           the service has no such procedure
//	ErrCantEncodeArgs    StatusCantEncodeArgs      CLUSTER_RPC_CANTENCODEARGS        arguments over MaxPayload or not compressible
//	ErrCantDecodeArgs    StatusCantDecodeArgs      CLUSTER_RPC_CANTDECODEARGS        the server could not decode the arguments
//	ErrCantDecodeRes     StatusCantDecodeRes       CLUSTER_RPC_CANTDECODERES         the reply did not decode
//	ErrCantSend          StatusCantSend            CLUSTER_RPC_CANTSEND              (reserved: sending fails as ErrNodeDown)
//	ErrCantRecv          StatusCantRecv            CLUSTER_RPC_CANTRECV              (reserved: receiving fails as ErrNodeDown)
//	ErrVersMismatch      StatusVersMismatch        CLUSTER_RPC_VERSMISMATCH          protocol version mismatch
//	ErrAuth              StatusAuthError           CLUSTER_RPC_AUTHERROR             refused by the server (e.g. an interceptor)
//	ErrHandshake         StatusHandshake           (new)                             the peer refused the connection's handshake
//	ErrSystem            StatusSystemError         CLUSTER_RPC_SYSTEMERROR           the server failed outside the handler
//	ErrFailed            StatusFailed              CLUSTER_RPC_FAILED                the handler returned an error (or a declared one)
//	(none)               StatusUnknown             -                                 not an ICS error
//
// Errors that come from the remote node are *RemoteError (errors.As),
// declared errors of icsgen stubs included. A handler that returns the
// error of a call it made itself fails with StatusFailed: the caller sees
// ErrFailed with the nested error's text, never the nested status as if
// it were this handler's own.
var (
	ErrTimedOut         = errors.New("ics: rpc timed out")                        // CLUSTER_RPC_TIMEDOUT
	ErrCantEncodeArgs   = errors.New("ics: cannot encode arguments")              // CLUSTER_RPC_CANTENCODEARGS
	ErrCantDecodeRes    = errors.New("ics: cannot decode results")                // CLUSTER_RPC_CANTDECODERES
	ErrCantSend         = errors.New("ics: cannot send")                          // CLUSTER_RPC_CANTSEND
	ErrCantRecv         = errors.New("ics: cannot receive")                       // CLUSTER_RPC_CANTRECV
	ErrVersMismatch     = errors.New("ics: protocol version mismatch")            // CLUSTER_RPC_VERSMISMATCH
	ErrAuth             = errors.New("ics: authentication error")                 // CLUSTER_RPC_AUTHERROR
	ErrProgUnavail      = errors.New("ics: service (program) unavailable")        // CLUSTER_RPC_PROGUNAVAIL
	ErrProgVersMismatch = errors.New("ics: service version mismatch")             // CLUSTER_RPC_PROGVERSMISMATCH
	ErrProcUnavail      = errors.New("ics: procedure unavailable")                // CLUSTER_RPC_PROCUNAVAIL
	ErrCantDecodeArgs   = errors.New("ics: server cannot decode arguments")       // CLUSTER_RPC_CANTDECODEARGS
	ErrSystem           = errors.New("ics: system error")                         // CLUSTER_RPC_SYSTEMERROR
	ErrUnknownHost      = errors.New("ics: unknown node")                         // CLUSTER_RPC_UNKNOWNHOST
	ErrFailed           = errors.New("ics: remote procedure failed")              // CLUSTER_RPC_FAILED
	ErrIntr             = errors.New("ics: rpc interrupted")                      // CLUSTER_RPC_INTR
	ErrNodeDown         = errors.New("ics: node down")                            // CI's node-down return
	ErrTooManyCalls     = errors.New("ics: too many outstanding rpcs")            // this node's client handle table full
	ErrBusy             = errors.New("ics: peer busy")                            // the peer refused: too many requests from us in flight
	ErrShuttingDown     = errors.New("ics: peer shutting down")                   // the peer drains (Shutdown) and takes no new calls
	ErrClosed           = errors.New("ics: node closed")                          // local node shut down
	ErrThrottled        = errors.New("ics: channel throttled until the deadline") // no credit before ctx ended
	ErrBadConfig        = errors.New("ics: bad configuration")                    // Config.validate
	ErrBadService       = errors.New("ics: bad service registration")             // Register
	ErrHandshake        = errors.New("ics: handshake refused")                    // connection rejected by the peer
	ErrEngineStopped    = errors.New("ics: event loops stopped")                  // fatal: see Node.Err
	// ErrDeclaredDown: the peer refused our handshake because it declared
	// us down (NodeDown, or NodeDownIncarnation of this incarnation there);
	// a HandshakeError with RefuseDeclaredDown wraps it.
	ErrDeclaredDown = errors.New("ics: this incarnation was declared down by the peer")
)

// Status is CI's status code of a call's outcome. Codes up to
// StatusShuttingDown travel in reply headers; the others name local
// outcomes, for Code and metrics, and are never sent.
type Status uint16

// Status codes; only appended to, as the first ones cross the wire.
const (
	StatusOK Status = iota
	StatusProgUnavail
	StatusProcUnavail
	StatusProgVersMismatch
	StatusCantDecodeArgs
	StatusSystemError
	StatusFailed
	StatusAuthError
	StatusBusy
	StatusShuttingDown
	StatusTimedOut // the first status a reply may not carry: local outcomes follow
	StatusIntr
	StatusThrottled
	StatusNodeDown
	StatusTooManyCalls
	StatusClosed
	StatusUnknownHost
	StatusCantEncodeArgs
	StatusCantDecodeRes
	StatusCantSend
	StatusCantRecv
	StatusVersMismatch
	StatusHandshake
	StatusUnknown // an error that is none of ICS's
	statusLimit
)

// statusWireLimit is the first status a reply may not carry.
const statusWireLimit = StatusTimedOut

// statusTable gives each status its sentinel and its name in metrics'
// code label.
var statusTable = [statusLimit]struct {
	err  error
	name string
}{
	StatusOK:               {nil, "ok"},
	StatusProgUnavail:      {ErrProgUnavail, "prog_unavail"},
	StatusProcUnavail:      {ErrProcUnavail, "proc_unavail"},
	StatusProgVersMismatch: {ErrProgVersMismatch, "prog_vers_mismatch"},
	StatusCantDecodeArgs:   {ErrCantDecodeArgs, "cant_decode_args"},
	StatusSystemError:      {ErrSystem, "system_error"},
	StatusFailed:           {ErrFailed, "failed"},
	StatusAuthError:        {ErrAuth, "auth_error"},
	StatusBusy:             {ErrBusy, "busy"},
	StatusShuttingDown:     {ErrShuttingDown, "shutting_down"},
	StatusTimedOut:         {ErrTimedOut, "timed_out"},
	StatusIntr:             {ErrIntr, "intr"},
	StatusThrottled:        {ErrThrottled, "throttled"},
	StatusNodeDown:         {ErrNodeDown, "node_down"},
	StatusTooManyCalls:     {ErrTooManyCalls, "too_many_calls"},
	StatusClosed:           {ErrClosed, "closed"},
	StatusUnknownHost:      {ErrUnknownHost, "unknown_host"},
	StatusCantEncodeArgs:   {ErrCantEncodeArgs, "cant_encode_args"},
	StatusCantDecodeRes:    {ErrCantDecodeRes, "cant_decode_res"},
	StatusCantSend:         {ErrCantSend, "cant_send"},
	StatusCantRecv:         {ErrCantRecv, "cant_recv"},
	StatusVersMismatch:     {ErrVersMismatch, "vers_mismatch"},
	StatusHandshake:        {ErrHandshake, "handshake"},
	StatusUnknown:          {nil, "unknown"},
}

// Err maps a status to its sentinel error (nil for StatusOK and
// StatusUnknown).
func (s Status) Err() error {
	if s < statusLimit {
		return statusTable[s].err
	}
	return fmt.Errorf("%w: unknown status %d", ErrSystem, uint16(s))
}

// String is the status's name as metrics label it: "timed_out", "busy".
func (s Status) String() string {
	if s < statusLimit {
		return statusTable[s].name
	}
	return fmt.Sprintf("status(%d)", uint16(s))
}

// Code is the Status of any error a call returned: StatusOK for nil,
// StatusUnknown for an error that wraps none of the sentinels. Like
// gRPC's status.Code, it is the one switch a caller needs.
func Code(err error) Status {
	if err == nil {
		return StatusOK
	}
	var re *RemoteError
	if errors.As(err, &re) && re.Code < statusLimit {
		return re.Code
	}
	for s := StatusProgUnavail; s < StatusUnknown; s++ {
		if errors.Is(err, statusTable[s].err) {
			return s
		}
	}
	return StatusUnknown
}

// statusOf maps a handler's error to the status sent back. Only the
// statuses a server itself gives travel; an error that carries a remote
// status (the handler returned what a nested call returned), or any other
// error, is a failure of this handler: StatusFailed, its text the payload.
func statusOf(err error) Status {
	var re *RemoteError
	if errors.As(err, &re) {
		return StatusFailed
	}
	for _, s := range [...]Status{StatusCantDecodeArgs, StatusAuthError, StatusProgUnavail, StatusProcUnavail, StatusProgVersMismatch, StatusSystemError, StatusBusy, StatusShuttingDown} {
		if errors.Is(err, statusTable[s].err) {
			return s
		}
	}
	return StatusFailed
}

// RemoteError is the error a call returns when the remote node answered
// with a failure: Code is the status it sent and Unwrap gives its
// sentinel. For a declared error of icsgen stubs (stub.Fail), Code is
// StatusFailed and Declared is the service's declared sentinel, which
// errors.Is matches too; Message is the text of the server's error.
type RemoteError struct {
	Code     Status
	Message  string
	Declared error // a declared error's sentinel; nil otherwise
}

func (e *RemoteError) Error() string {
	if e.Declared != nil {
		return e.Message
	}
	// A handler that wrapped the sentinel (fmt.Errorf("...: %w",
	// ErrCantDecodeArgs), or a stub's ArgsError) sent its text too: say it
	// once.
	status := e.Code.Err().Error()
	msg := strings.TrimSuffix(strings.TrimPrefix(e.Message, status+": "), ": "+status)
	if msg == "" || msg == status {
		return status
	}
	return status + ": " + msg
}

// Unwrap gives the status's sentinel and, for a declared error, the
// declared sentinel.
func (e *RemoteError) Unwrap() []error {
	if e.Declared != nil {
		return []error{e.Code.Err(), e.Declared}
	}
	return []error{e.Code.Err()}
}

// remoteStatus turns a reply's status into the caller's error. A status a
// reply may not carry (a local one, or past the list) is a server fault.
func remoteStatus(st Status, msg []byte) error {
	if st >= statusWireLimit {
		return &RemoteError{Code: StatusSystemError, Message: fmt.Sprintf("reply with invalid status %d: %s", uint16(st), msg)}
	}
	return &RemoteError{Code: st, Message: string(msg)}
}
