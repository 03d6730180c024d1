package engine

import (
	"errors"
	"fmt"
)

// RPC errors, after CI's CLUSTER_RPC_* codes. Every error an RPC returns
// wraps exactly one of these, so callers test with errors.Is.
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
	ErrTooManyCalls     = errors.New("ics: too many outstanding rpcs")            // client handle table full
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

// Status is the code carried in a reply header.
type Status uint16

// Reply status codes; only appended to, as they cross the wire.
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
	statusLimit
)

var statusErrors = [...]error{
	StatusOK:               nil,
	StatusProgUnavail:      ErrProgUnavail,
	StatusProcUnavail:      ErrProcUnavail,
	StatusProgVersMismatch: ErrProgVersMismatch,
	StatusCantDecodeArgs:   ErrCantDecodeArgs,
	StatusSystemError:      ErrSystem,
	StatusFailed:           ErrFailed,
	StatusAuthError:        ErrAuth,
	StatusBusy:             ErrTooManyCalls,
}

// Err maps a reply status to its sentinel error.
func (s Status) Err() error {
	if s < statusLimit {
		return statusErrors[s]
	}
	return fmt.Errorf("%w: unknown reply status %d", ErrSystem, uint16(s))
}

// statusOf maps a handler's error to the status sent back. Errors that are
// not one of ours travel as StatusFailed with their text as the payload.
func statusOf(err error) Status {
	for s := StatusProgUnavail; s < statusLimit; s++ {
		if errors.Is(err, statusErrors[s]) {
			return s
		}
	}
	return StatusFailed
}

// RemoteError is the error a call returns when the remote handler failed:
// it wraps the sentinel for Code and carries the handler's message.
type RemoteError struct {
	Code    Status
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return e.Code.Err().Error()
	}
	return e.Code.Err().Error() + ": " + e.Message
}

func (e *RemoteError) Unwrap() error { return e.Code.Err() }
