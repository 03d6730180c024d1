package clms

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Bounds the decoders enforce before allocating: network input is hostile
// until proven otherwise. Every limit is far above what an honest peer sends.
const (
	maxString     = 256     // names, reasons, labels
	maxStringList = 64      // key services, capabilities, failed subsystems
	maxRecords    = 1024    // records in one push (pushBatch is 256)
	maxRaftBytes  = 8 << 20 // one raft message (raft's MaxSizePerMsg is 1 MiB)
	maxKeyData    = 4 << 20 // one member's PullData or HandOff for a key service
)

// ErrDecode is returned (wrapped) for any malformed message or command.
var ErrDecode = errors.New("clms: malformed encoding")

// encoder appends the compact binary encoding: unsigned varints for numbers,
// length-prefixed bytes for strings.
type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) bytes(p []byte)   { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) strs(l []string) {
	e.uvarint(uint64(len(l)))
	for _, s := range l {
		e.str(s)
	}
}

func (e *encoder) info(i *NodeInfo) {
	e.uvarint(uint64(i.CPUsTotal))
	e.uvarint(uint64(i.CPUsOnline))
	e.uvarint(i.MemoryBytes)
	e.strs(i.KeyServices)
	e.strs(i.Capabilities)
}

func (e *encoder) transition(t *Transition) {
	e.uvarint(uint64(t.ID))
	if t.Time.IsZero() {
		e.uvarint(0)
	} else {
		e.uvarint(uint64(t.Time.UnixNano()))
	}
	e.uvarint(uint64(t.Node))
	e.uvarint(t.Incarnation)
	e.uvarint(uint64(t.From))
	e.uvarint(uint64(t.To))
	e.uvarint(uint64(t.Cause))
}

// decoder reads what encoder wrote; the first error sticks and every later
// read returns zero, so callers check err once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrDecode, what)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// small reads a varint that must fit below max (node numbers, enums).
func (d *decoder) small(max uint64, what string) uint64 {
	v := d.uvarint()
	if v > max {
		d.fail(what + " out of range")
		return 0
	}
	return v
}

func (d *decoder) bytes(max int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("length out of range")
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) str() string { return string(d.bytes(maxString)) }

func (d *decoder) strs() []string {
	n := d.uvarint()
	if d.err != nil || n == 0 {
		return nil
	}
	// Each string costs at least one byte, so n is bounded by what is left
	// before anything is allocated.
	if n > maxStringList || n > uint64(len(d.b)) {
		d.fail("list too long")
		return nil
	}
	l := make([]string, n)
	for i := range l {
		l[i] = d.str()
	}
	return l
}

func (d *decoder) info() NodeInfo {
	return NodeInfo{
		CPUsTotal:    uint32(d.small(math.MaxUint32, "cpus")),
		CPUsOnline:   uint32(d.small(math.MaxUint32, "cpus")),
		MemoryBytes:  d.uvarint(),
		KeyServices:  d.strs(),
		Capabilities: d.strs(),
	}
}

func (d *decoder) transition() Transition {
	var t Transition
	t.ID = TransitionID(d.uvarint())
	if ns := d.uvarint(); ns != 0 {
		if ns > math.MaxInt64 {
			d.fail("time out of range")
		}
		t.Time = time.Unix(0, int64(ns)).UTC()
	}
	t.Node = NodeNum(d.small(math.MaxUint32, "node"))
	t.Incarnation = d.uvarint()
	t.From = NodeState(d.small(uint64(StateDown), "state"))
	t.To = NodeState(d.small(uint64(StateDown), "state"))
	t.Cause = Cause(d.small(uint64(CauseOperator), "cause"))
	return t
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}
