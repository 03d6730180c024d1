package clms

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Key services (docs/CLMS.md, "Key services"): a centralised service runs on
// exactly one capable node at a time. The master assigns it by committing a
// RecordKeyService with an epoch, the fencing token, that grows with every
// new owner; the owner acts only while it holds its membership lease and the
// record names its incarnation; a new owner is committed only after the old
// one left membership (so its lease ended, by the membership safety
// argument) or released the service in a planned hand-over.

// Errors of key services.
var (
	ErrUnknownKeyService = errors.New("clms: unknown key service")
	ErrStaleEpoch        = errors.New("clms: operation stamped with a superseded key-service epoch")
)

// PanicPolicy is what the cluster does when the owner of a critical key
// service dies and no capable node is left: CI's cluster panic.
type PanicPolicy string

// The panic policies.
const (
	// PanicHalt: every member fences itself (ActFence, with a reason naming
	// the key service): a cluster without its critical service must not go
	// on as if it were whole.
	PanicHalt PanicPolicy = "halt"
	// PanicDegraded: stay up; every member logs it (ActLog) and reports the
	// service in Stats.KeyDegraded until a capable node joins and takes it.
	PanicDegraded PanicPolicy = "degraded"
)

// KeyServiceSpec is one key service as the core needs it. Every node must
// have the same list (it comes from cluster.toml's [[key_services]] and the
// registrations: KeyServices.Specs); the master refuses the join of a node
// whose list differs (ConfigDigest).
type KeyServiceSpec struct {
	Name string
	// Critical holds back cluster formation until the service has a ready
	// owner, and makes the cluster panic (KeyConfig.Panic) if its owner dies
	// with no capable node left.
	Critical bool
	// Pull: the service registered pullData: a new owner pulls data from
	// every surviving member after Failover and runs FailoverData with it.
	Pull bool
}

// KeyConfig configures key services in the core.
type KeyConfig struct {
	Services []KeyServiceSpec
	// Panic applies to critical services; zero is PanicHalt.
	Panic PanicPolicy
	// PullTimeout bounds the pull of a failover, from its start: a member
	// that has not answered by then is left out. Zero is
	// Timing.CallbackTimeout (PullData is a callback like the subsystems').
	PullTimeout time.Duration
	// DrainTimeout bounds how long a planned Shutdown waits for this node's
	// key services to be handed over before it leaves anyway (they then
	// fail over). Zero is 2*Timing.CallbackTimeout: HandOff and TakeOver
	// are callbacks, one each.
	DrainTimeout time.Duration
}

// KeyPhase is where a key service is. Stored and sent: only append.
type KeyPhase uint8

const (
	// KeyUnowned: no owner (none capable, or the last one died).
	KeyUnowned KeyPhase = iota
	// KeyFailover: Owner took over in Epoch and is running Failover, the
	// pull and FailoverData (or, Handover set, taking From's hand-over).
	KeyFailover
	// KeyReady: Owner serves in Epoch; the cluster may use it.
	KeyReady
	// KeyHandover: a planned move to Target: Owner hands its state over
	// and releases the service; then Target becomes owner in Epoch+1.
	KeyHandover
	keyPhaseEnd
)

var keyPhaseNames = [...]string{"unowned", "failover", "ready", "handover"}

func (p KeyPhase) String() string {
	if int(p) < len(keyPhaseNames) {
		return keyPhaseNames[p]
	}
	return fmt.Sprintf("KeyPhase(%d)", uint8(p))
}

// KeyRecord is the committed state of one key service, and the payload of a
// RecordKeyService.
type KeyRecord struct {
	Name     string
	Owner    NodeNum // 0: unowned
	OwnerInc uint64
	// Epoch is the fencing token: it grows by one with every new owner and
	// never decreases; an unowned record keeps the last owner's epoch.
	Epoch    uint64
	Phase    KeyPhase
	Handover bool    // KeyFailover by a planned hand-over from From (no Failover routine)
	From     NodeNum // the previous owner, on a new owner's record
	Target   NodeNum // KeyHandover: where the service moves
	Panic    bool    // KeyUnowned of a critical service: the cluster panics
}

func (r KeyRecord) String() string {
	return fmt.Sprintf("key service %q owner %d (inc %d) epoch %d %s", r.Name, r.Owner, r.OwnerInc, r.Epoch, r.Phase)
}

// keyCAS is what a key command expects the service's state to be when
// applied, so a duplicated or stale proposal applies as a no-op everywhere.
type keyCAS struct {
	Epoch uint64
	Owner NodeNum
	Phase KeyPhase
}

func (e *encoder) keyRecord(r *KeyRecord) {
	e.str(r.Name)
	e.uvarint(uint64(r.Owner))
	e.uvarint(r.OwnerInc)
	e.uvarint(r.Epoch)
	e.uvarint(uint64(r.Phase))
	flags := uint64(0)
	if r.Handover {
		flags |= 1
	}
	if r.Panic {
		flags |= 2
	}
	e.uvarint(flags)
	e.uvarint(uint64(r.From))
	e.uvarint(uint64(r.Target))
}

func (d *decoder) keyRecord() KeyRecord {
	var r KeyRecord
	r.Name = d.str()
	r.Owner = NodeNum(d.small(1<<32-1, "node"))
	r.OwnerInc = d.uvarint()
	r.Epoch = d.uvarint()
	r.Phase = KeyPhase(d.small(uint64(keyPhaseEnd-1), "key phase"))
	flags := d.small(3, "key flags")
	r.Handover, r.Panic = flags&1 != 0, flags&2 != 0
	r.From = NodeNum(d.small(1<<32-1, "node"))
	r.Target = NodeNum(d.small(1<<32-1, "node"))
	return r
}

// holds reports whether incarnation inc of n is a member in s.
func (s *State) holds(n NodeNum, inc uint64) bool {
	m, ok := s.members[n]
	return ok && n != 0 && m.Incarnation == inc && m.State.IsMember()
}

// KeyService returns the committed state of key service name (zero phase
// KeyUnowned and ok false if it never had an owner).
func (s *State) KeyService(name string) (KeyRecord, bool) {
	r, ok := s.keys[name]
	if !ok {
		return KeyRecord{Name: name}, false
	}
	return *r, true
}

// KeyServices returns every key service that has a record, by name.
func (s *State) KeyServices() []KeyRecord {
	out := make([]KeyRecord, 0, len(s.keys))
	for _, n := range slices.Sorted(maps.Keys(s.keys)) {
		out = append(out, *s.keys[n])
	}
	return out
}

// CheckEpoch is the fencing check against this node's applied state: it
// refuses (ErrStaleEpoch) an operation of key service name stamped with an
// epoch older than the current one. A newer epoch than this node applied is
// accepted: the record is on its way. Services that keep state outside the
// cluster should use an EpochGuard, which also remembers the newest epoch
// an operation carried.
func (s *State) CheckEpoch(name string, epoch uint64) error {
	r, ok := s.keys[name]
	if ok && epoch < r.Epoch {
		return fmt.Errorf("%w: %q epoch %d, current %d (owner %d)", ErrStaleEpoch, name, epoch, r.Epoch, r.Owner)
	}
	return nil
}

// decideKey turns a key command into its record, or false if the state
// moved on (the compare-and-set failed) or the command breaks a rule. The
// rules are the safety of key services, checked where every node applies
// them, whatever a master proposed:
//   - a new owner (KeyFailover) gets exactly Epoch+1 and must be a member;
//     the previous owner must have left membership (its lease ended), or be
//     handing over (it released the service before the master proposed);
//   - ready, hand-over and abort keep owner and epoch;
//   - a service becomes unowned only when its owner is no longer a member.
func (s *State) decideKey(c command) (Record, bool) {
	n := c.Key
	cur, _ := s.KeyService(n.Name)
	if n.Name == "" || c.KeyFrom != (keyCAS{cur.Epoch, cur.Owner, cur.Phase}) {
		return Record{}, false
	}
	same := n.Owner == cur.Owner && n.OwnerInc == cur.OwnerInc && n.Epoch == cur.Epoch && n.Owner != 0
	switch n.Phase {
	case KeyFailover:
		if n.Epoch != cur.Epoch+1 || !s.holds(n.Owner, n.OwnerInc) || n.From != cur.Owner {
			return Record{}, false
		}
		if n.Handover {
			if cur.Phase != KeyHandover || n.Owner == cur.Owner {
				return Record{}, false
			}
		} else if cur.Owner != 0 && s.holds(cur.Owner, cur.OwnerInc) {
			return Record{}, false
		}
	case KeyReady:
		if !same || (cur.Phase != KeyFailover && cur.Phase != KeyHandover) {
			return Record{}, false
		}
	case KeyHandover:
		if !same || cur.Phase != KeyReady || n.Target == 0 || n.Target == n.Owner {
			return Record{}, false
		}
	case KeyUnowned:
		if n.Owner != 0 || n.Epoch != cur.Epoch || cur.Owner == 0 || s.holds(cur.Owner, cur.OwnerInc) {
			return Record{}, false
		}
	default:
		return Record{}, false
	}
	return Record{Seq: s.LastSeq() + 1, Kind: RecordKeyService, Transition: Transition{Time: c.T.Time}, Key: n}, true
}

func (s *State) applyKey(r Record) error {
	check, ok := s.decideKey(command{Kind: RecordKeyService, T: r.Transition, Key: r.Key, KeyFrom: s.keyFrom(r.Key.Name)})
	if !ok || check.Seq != r.Seq || check.Key != r.Key {
		return fmt.Errorf("%w: %v", errRecord, r.Key)
	}
	k := r.Key
	s.keys[k.Name] = &k
	s.appendRecord(r)
	return nil
}

func (s *State) keyFrom(name string) keyCAS {
	cur, _ := s.KeyService(name)
	return keyCAS{cur.Epoch, cur.Owner, cur.Phase}
}

// formed reports whether every critical service has a ready owner.
func (s *State) formed(specs []KeyServiceSpec) bool {
	for _, sp := range specs {
		if r, ok := s.keys[sp.Name]; sp.Critical && (!ok || r.Phase != KeyReady) {
			return false
		}
	}
	return true
}

// EpochGuard is the fencing check for a service's own resources (a disk, a
// table, a peer service): it remembers the newest epoch of each key service
// it saw — from applied records (Observe) and from the operations it
// admitted (Check) — and refuses an operation stamped with an older one. So
// a former owner that was cut off cannot act through it once the new owner's
// epoch reached it, whichever came first. Safe for concurrent use; the zero
// value is ready.
type EpochGuard struct {
	mu     sync.Mutex
	newest map[string]uint64
}

// Observe takes records as the core applied them (Ready.Applied, or
// State.Records): key-service records raise the bar.
func (g *EpochGuard) Observe(recs []Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range recs {
		if r.Kind == RecordKeyService {
			g.raise(r.Key.Name, r.Key.Epoch)
		}
	}
}

func (g *EpochGuard) raise(name string, epoch uint64) {
	if g.newest == nil {
		g.newest = map[string]uint64{}
	}
	g.newest[name] = max(g.newest[name], epoch)
}

// Check admits an operation of key service name stamped with epoch, or
// refuses it with ErrStaleEpoch if a newer epoch was seen. An admitted newer
// epoch raises the bar: the old owner is refused from then on.
func (g *EpochGuard) Check(name string, epoch uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if cur := g.newest[name]; epoch < cur {
		return fmt.Errorf("%w: %q epoch %d, newest seen %d", ErrStaleEpoch, name, epoch, cur)
	}
	g.raise(name, epoch)
	return nil
}

// Newest returns the newest epoch seen for name.
func (g *EpochGuard) Newest(name string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.newest[name]
}
