package keyseq

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire: two procedures on ServiceID, each request and reply a few
// unsigned varints; every reply starts with a status byte
// (engine.Service.DeclaredErrors).
//
//	next: epoch, count        -> status [, epoch, first, count]
//	note: epoch, highest      -> status

// status is a reply's first byte.
type status uint8

const (
	statusOK          status = iota
	statusStaleEpoch         // the request's epoch is older than one the receiver saw
	statusNotOwner           // the receiver does not serve this epoch (yet)
	statusUnavailable        // the owner could not reserve ids: a member did not acknowledge
	statusBadRequest         // undecodable, or count out of 1..MaxCount
	statusEnd
)

var statusErrors = [statusEnd]error{nil, ErrStaleEpoch, ErrNotOwner, ErrUnavailable, ErrBadRequest}

func (s status) err() error {
	if s < statusEnd {
		return statusErrors[s]
	}
	return fmt.Errorf("%w: status %d", ErrBadReply, s)
}

// MaxCount bounds the ids one Next returns.
const MaxCount = 1 << 16

// maxWire bounds every request and reply: four uvarints and a status.
const maxWire = 1 + 4*binary.MaxVarintLen64

var errTrailing = errors.New("trailing bytes")

// decodeUvarints reads exactly len(out) uvarints from b.
func decodeUvarints(b []byte, out ...*uint64) error {
	if len(b) > maxWire {
		return fmt.Errorf("%d bytes, at most %d", len(b), maxWire)
	}
	for _, p := range out {
		v, n := binary.Uvarint(b)
		if n <= 0 || n != len(binary.AppendUvarint(nil, v)) {
			// Truncated, overflowing, or padded: one value, one encoding.
			return fmt.Errorf("bad uvarint (%d bytes left)", len(b))
		}
		*p, b = v, b[n:]
	}
	if len(b) != 0 {
		return errTrailing
	}
	return nil
}

func appendUvarints(b []byte, vs ...uint64) []byte {
	for _, v := range vs {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

// nextRequest and note are the two requests.
type nextRequest struct{ epoch, count uint64 }

func decodeNext(b []byte) (nextRequest, error) {
	var r nextRequest
	if err := decodeUvarints(b, &r.epoch, &r.count); err != nil {
		return r, err
	}
	if r.count == 0 || r.count > MaxCount {
		return r, fmt.Errorf("count %d out of 1..%d", r.count, MaxCount)
	}
	return r, nil
}

type note struct{ epoch, highest uint64 }

func decodeNote(b []byte) (note, error) {
	var n note
	err := decodeUvarints(b, &n.epoch, &n.highest)
	return n, err
}

// decodeNextReply reads a next reply: its status, and the range if OK.
func decodeNextReply(b []byte) (Range, error) {
	if len(b) == 0 {
		return Range{}, fmt.Errorf("%w: empty", ErrBadReply)
	}
	if st := status(b[0]); st != statusOK {
		return Range{}, st.err()
	}
	var r Range
	if err := decodeUvarints(b[1:], &r.Epoch, &r.First, &r.Count); err != nil {
		return Range{}, fmt.Errorf("%w: %v", ErrBadReply, err)
	}
	if r.Count == 0 || r.Count > MaxCount || r.First == 0 || r.First+r.Count < r.First {
		return Range{}, fmt.Errorf("%w: range %d+%d", ErrBadReply, r.First, r.Count)
	}
	return r, nil
}

// decodeStatus reads a note reply.
func decodeStatus(b []byte) error {
	if len(b) != 1 {
		return fmt.Errorf("%w: %d bytes", ErrBadReply, len(b))
	}
	return status(b[0]).err()
}

// decodeHighest reads PullData's and HandOff's data: one uvarint.
func decodeHighest(b []byte) (uint64, error) {
	var v uint64
	err := decodeUvarints(b, &v)
	return v, err
}
