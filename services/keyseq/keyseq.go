package keyseq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
)

// Name is the key service's name in cluster.toml.
const Name = "keyseq"

// ServiceID is where keyseq is served: the first service channel,
// subservice 4 (examplesvc and the benchmarks use 1-3).
var ServiceID = engine.ServiceOn(engine.ChanFirstService, 4)

const (
	procNext = 0
	procNote = 1
)

var (
	methodNext = engine.Method{Service: ServiceID, Proc: procNext, Name: Name, DeclaredErrors: true}
	methodNote = engine.Method{Service: ServiceID, Proc: procNote, Name: Name, DeclaredErrors: true}
)

// Errors of keyseq.
var (
	// ErrStaleEpoch: the request carried an epoch older than one the
	// receiver saw: it came from, or was meant for, a former owner.
	ErrStaleEpoch = errors.New("keyseq: stale epoch: a newer owner took over")
	// ErrNotOwner: the node asked does not serve that epoch (not the owner,
	// or still failing over).
	ErrNotOwner = errors.New("keyseq: not the owner in that epoch")
	// ErrUnavailable: the owner could not reserve ids: a member did not
	// acknowledge in time (it may be dying; CLMS will tell).
	ErrUnavailable = errors.New("keyseq: owner could not reserve ids")
	ErrBadRequest  = errors.New("keyseq: bad request")
	ErrBadReply    = errors.New("keyseq: bad reply")
	ErrNoOwner     = errors.New("keyseq: the service has no ready owner")
	ErrConfig      = errors.New("keyseq: invalid configuration")
)

// Config configures the service. Zero fields take the defaults noted.
type Config struct {
	// Critical: cluster formation waits for the service (default false:
	// a cluster can run without ids for a while).
	Critical bool
	// Block is how many ids the owner reserves with one round of notes to
	// every member. Larger blocks cost fewer rounds and waste more ids at
	// each failover (the unused rest of the block). Default 1000.
	Block uint64
	// NoteTimeout bounds one round of notes: a member that does not
	// acknowledge in time fails the Next calls waiting for it (retried by
	// Next) until CLMS declares it down. Default 1 s: well above a LAN
	// round trip, below the default lease.
	NoteTimeout time.Duration
	// RetryEvery is how often Next looks again while the service has no
	// ready owner or the owner changed. Default 5 ms: a failover takes tens
	// of milliseconds with the lan-fast profile.
	RetryEvery time.Duration
}

// DefaultConfig returns the defaults above.
func DefaultConfig() Config {
	return Config{Block: 1000, NoteTimeout: time.Second, RetryEvery: 5 * time.Millisecond}
}

// Range is count consecutive ids First .. First+Count-1, handed out by the
// owner in Epoch.
type Range struct {
	Epoch, First, Count uint64
}

// Last is the range's last id.
func (r Range) Last() uint64 { return r.First + r.Count - 1 }

// Assembled is what the owner continued from when it took the service over.
type Assembled struct {
	Epoch    uint64
	Handover bool                    // from the previous owner's HandOff, not a pull
	Pulled   map[clms.NodeNum]uint64 // each member's highest id, as pulled (Handover: the old owner's next-1 under its number)
	Base     uint64                  // the largest: the first id served is Base+1
	At       time.Time               // when FailoverData (or TakeOver) finished
}

// Stats describe this node's part of the service.
type Stats struct {
	Seen      uint64     // the highest id this node saw reserved or handed out
	Serving   bool       // this node is the owner and serves
	Epoch     uint64     // the epoch it serves (Serving) or last served
	Next      uint64     // the next id it would hand out (owner)
	Reserved  uint64     // the highest id every member acknowledged (owner)
	Assembled *Assembled // what the last takeover on this node continued from
	Refused   uint64     // requests and notes refused as stale
}

// Service is one node's keyseq: the key service's routines, the ICS
// service, and the client.
type Service struct {
	cfg Config
	eng *engine.Node
	r   *clms.Runner
	log *slog.Logger

	reserveMu sync.Mutex // one round of notes at a time (not held with mu)

	mu        sync.Mutex
	seen      uint64
	acting    bool   // Serve said so
	epoch     uint64 // Serve's epoch
	baseEpoch uint64 // the epoch whose FailoverData/TakeOver ran: serve only then
	next      uint64
	reserved  uint64
	assembled *Assembled
	refused   uint64
}

// Register adds keyseq to reg (before the node is built: the registry
// gives the core its list of key services) and returns the service, to
// Attach once the node exists.
func Register(reg *clms.KeyServices, cfg Config) (*Service, error) {
	d := DefaultConfig()
	if cfg.Block == 0 {
		cfg.Block = d.Block
	}
	if cfg.NoteTimeout == 0 {
		cfg.NoteTimeout = d.NoteTimeout
	}
	if cfg.RetryEvery == 0 {
		cfg.RetryEvery = d.RetryEvery
	}
	if cfg.NoteTimeout < 0 || cfg.RetryEvery < 0 || cfg.Block > 1<<40 {
		return nil, fmt.Errorf("%w: %+v", ErrConfig, cfg)
	}
	s := &Service{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	if err := reg.Register(Name, cfg.Critical, true, s); err != nil {
		return nil, err
	}
	return s, nil
}

// Attach registers the ICS service on eng (the node's engine) and takes
// the owner's whereabouts and the epoch guard from r (its CLMS runner).
// Before the node starts.
func (s *Service) Attach(eng *engine.Node, r *clms.Runner) error {
	s.eng, s.r = eng, r
	s.log = eng.Logger().With("service", Name)
	return eng.Register(engine.Service{ID: ServiceID, Name: Name, Procs: []engine.Handler{procNext: s.serveNext, procNote: s.serveNote},
		MinHandles: 1, MaxHandles: 16, DeclaredErrors: true})
}

// Stats returns a snapshot.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Seen: s.seen, Serving: s.serving(), Epoch: s.epoch, Next: s.next, Reserved: s.reserved, Refused: s.refused}
	if a := s.assembled; a != nil {
		c := *a
		c.Pulled = maps.Clone(a.Pulled)
		st.Assembled = &c
	}
	return st
}

func (s *Service) serving() bool { return s.acting && s.baseEpoch == s.epoch && s.epoch != 0 }

func (s *Service) see(v uint64) {
	s.mu.Lock()
	s.seen = max(s.seen, v)
	s.mu.Unlock()
}

// The key service's routines (clms.KeyService).

// Failover forgets what this node served before: it serves the new epoch
// only after FailoverData.
func (s *Service) Failover(_ context.Context, epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.baseEpoch, s.next, s.reserved = 0, 0, 0
	return nil
}

// PullData returns the highest id this node saw. The epoch raises the
// guard's bar: a note of the former owner arriving later is refused.
func (s *Service) PullData(_ context.Context, epoch uint64) ([]byte, error) {
	if err := s.r.EpochGuard().Check(Name, epoch); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return appendUvarints(nil, s.seen), nil
}

// FailoverData continues after the highest id any member saw.
func (s *Service) FailoverData(_ context.Context, epoch uint64, pulled map[clms.NodeNum][]byte) error {
	a := &Assembled{Epoch: epoch, Pulled: map[clms.NodeNum]uint64{}}
	for n, b := range pulled {
		v, err := decodeHighest(b)
		if err != nil {
			// Continuing without a member's highest could hand its ids out
			// again: fail, and serve nothing in this epoch.
			return fmt.Errorf("keyseq: node %d's data: %w", n, err)
		}
		a.Pulled[n], a.Base = v, max(a.Base, v)
	}
	s.takeOver(a)
	return nil
}

// HandOff stops serving and hands over the exact next id.
func (s *Service) HandOff(_ context.Context, epoch uint64) ([]byte, error) {
	s.reserveMu.Lock() // no round of notes in flight: next is final
	defer s.reserveMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.baseEpoch != epoch {
		return nil, fmt.Errorf("%w: hand-over of epoch %d, serving %d", ErrNotOwner, epoch, s.baseEpoch)
	}
	s.acting = false
	return appendUvarints(nil, s.next-1), nil
}

// TakeOver continues right after the previous owner's last id.
func (s *Service) TakeOver(_ context.Context, epoch uint64, state []byte) error {
	v, err := decodeHighest(state)
	if err != nil {
		return fmt.Errorf("keyseq: hand-over state: %w", err)
	}
	s.takeOver(&Assembled{Epoch: epoch, Handover: true, Pulled: map[clms.NodeNum]uint64{}, Base: v})
	return nil
}

func (s *Service) takeOver(a *Assembled) {
	a.At = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = max(s.seen, a.Base)
	s.baseEpoch, s.next, s.reserved, s.assembled = a.Epoch, a.Base+1, a.Base, a
	s.log.Info("keyseq: took over", "epoch", a.Epoch, "continue_after", a.Base, "handover", a.Handover)
}

// Serve starts or stops serving in epoch; it never blocks.
func (s *Service) Serve(epoch uint64, acting bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acting, s.epoch = acting, epoch
}

// The ICS side.

func reply(resp *engine.Response, st status, vs ...uint64) error {
	resp.Body = appendUvarints(append(resp.Body[:0], byte(st)), vs...)
	return nil
}

func (s *Service) serveNext(ctx context.Context, req *engine.Request, resp *engine.Response) error {
	r, err := decodeNext(req.Args)
	if err != nil {
		return reply(resp, statusBadRequest)
	}
	rg, st := s.next1(ctx, r)
	if st != statusOK {
		return reply(resp, st)
	}
	return reply(resp, statusOK, rg.Epoch, rg.First, rg.Count)
}

// next1 hands out r.count ids if this node serves r.epoch.
func (s *Service) next1(ctx context.Context, r nextRequest) (Range, status) {
	if err := s.r.EpochGuard().Check(Name, r.epoch); err != nil {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		return Range{}, statusStaleEpoch
	}
	s.mu.Lock()
	if !s.serving() || s.epoch != r.epoch {
		s.mu.Unlock()
		return Range{}, statusNotOwner
	}
	if s.next+r.count-1 <= s.reserved {
		rg := Range{Epoch: s.epoch, First: s.next, Count: r.count}
		s.next += r.count
		s.mu.Unlock()
		return rg, statusOK
	}
	s.mu.Unlock()
	return s.reserveAndNext(ctx, r)
}

// reserveAndNext reserves a new block on every member, then hands out.
func (s *Service) reserveAndNext(ctx context.Context, r nextRequest) (Range, status) {
	s.reserveMu.Lock()
	defer s.reserveMu.Unlock()
	s.mu.Lock()
	if !s.serving() || s.epoch != r.epoch {
		s.mu.Unlock()
		return Range{}, statusNotOwner
	}
	if s.next+r.count-1 > s.reserved { // another call may have reserved meanwhile
		upto := s.next + r.count - 1 + s.cfg.Block
		epoch := s.epoch
		s.mu.Unlock()
		if st := s.noteAll(ctx, epoch, upto); st != statusOK {
			return Range{}, st
		}
		s.mu.Lock()
		if !s.serving() || s.epoch != epoch {
			s.mu.Unlock()
			return Range{}, statusNotOwner
		}
		s.reserved = max(s.reserved, upto)
		s.seen = max(s.seen, upto)
	}
	rg := Range{Epoch: s.epoch, First: s.next, Count: r.count}
	s.next += r.count
	s.mu.Unlock()
	return rg, statusOK
}

// noteAll tells every other member that ids up to upto may be in use, and
// waits for all of them to acknowledge.
func (s *Service) noteAll(ctx context.Context, epoch, upto uint64) status {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.NoteTimeout)
	defer cancel()
	self := s.eng.Num()
	args := appendUvarints(nil, epoch, upto)
	var members []clms.NodeNum
	for _, m := range s.r.Status().Members {
		if m.State.IsMember() && m.Node != self {
			members = append(members, m.Node)
		}
	}
	errs := make(chan error, len(members))
	for _, n := range members {
		go func() {
			b, err := s.eng.Call(ctx, n, methodNote, args, nil)
			if err == nil {
				err = decodeStatus(b)
			}
			if err != nil {
				err = fmt.Errorf("node %d: %w", n, err)
			}
			errs <- err
		}()
	}
	st := statusOK
	for range members {
		if err := <-errs; err != nil {
			s.log.Warn("keyseq: a member did not acknowledge a reservation", "epoch", epoch, "upto", upto, "err", err)
			if errors.Is(err, ErrStaleEpoch) {
				st = statusStaleEpoch // a newer owner exists: this one is cut off
			} else if st == statusOK {
				st = statusUnavailable
			}
		}
	}
	return st
}

func (s *Service) serveNote(_ context.Context, req *engine.Request, resp *engine.Response) error {
	n, err := decodeNote(req.Args)
	if err != nil {
		return reply(resp, statusBadRequest)
	}
	if err := s.r.EpochGuard().Check(Name, n.epoch); err != nil {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		s.log.Warn("keyseq: refused a reservation from a former owner", "from", req.From, "err", err)
		return reply(resp, statusStaleEpoch)
	}
	s.see(n.highest)
	return reply(resp, statusOK)
}

// The client.

// Owner returns the ready owner and its epoch as this node applied them.
func (s *Service) Owner() (clms.NodeNum, uint64, bool) {
	k, ok := s.r.KeyService(Name)
	if !ok || k.Phase != clms.KeyReady || k.Owner == 0 {
		return 0, 0, false
	}
	return k.Owner, k.Epoch, true
}

// Next returns count new ids (1..MaxCount) from the owner. While the
// service fails over, or the owner is refusing this epoch, it looks again
// every RetryEvery until ctx ends.
func (s *Service) Next(ctx context.Context, count uint64) (Range, error) {
	var last error = ErrNoOwner
	for {
		if owner, epoch, ok := s.Owner(); ok {
			rg, err := s.NextAt(ctx, owner, epoch, count)
			switch {
			case err == nil:
				return rg, nil
			case errors.Is(err, ErrBadRequest), errors.Is(err, ErrBadReply):
				return Range{}, err
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return Range{}, fmt.Errorf("%w (last: %w)", ctx.Err(), last)
		case <-time.After(s.cfg.RetryEvery):
		}
	}
}

// NextAt asks owner for count ids in epoch, once: what a client that
// remembered an owner does. ErrStaleEpoch if owner has seen a newer one.
func (s *Service) NextAt(ctx context.Context, owner clms.NodeNum, epoch, count uint64) (Range, error) {
	if count == 0 || count > MaxCount {
		return Range{}, fmt.Errorf("%w: count %d out of 1..%d", ErrBadRequest, count, MaxCount)
	}
	var rg Range
	var err error
	if owner == s.eng.Num() {
		var st status
		if rg, st = s.next1(ctx, nextRequest{epoch: epoch, count: count}); st != statusOK {
			err = st.err()
		}
	} else {
		var b []byte
		if b, err = s.eng.Call(ctx, owner, methodNext, appendUvarints(nil, epoch, count), nil); err == nil {
			rg, err = decodeNextReply(b)
		}
	}
	if err != nil {
		return Range{}, err
	}
	s.see(rg.Last())
	return rg, nil
}
