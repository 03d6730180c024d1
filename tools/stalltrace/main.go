// Command stalltrace reads flight-recorder snapshots written by bench's
// TestTraceSlowCalls and says, for each call marked "slowcall", where its
// time went: it samples the call every 5 µs and labels each instant by
// what the two processes' schedulers were doing (a goroutine runnable while
// a P is held by an event loop in epoll_wait, a P idle, a read/write
// system call in progress, nothing runnable at all...), then counts the
// calls by the class that took most of their time (docs/PERFORMANCE.md,
// "Stalls at p99.9"). It is a module of its own so that the engine's
// module does not depend on golang.org/x/exp.
//
//	go run . [-v] /tmp/stalls/*.trace
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

type seg struct {
	start, end trace.Time
	state      trace.GoState
	proc       trace.ProcID // proc of the event that began the segment
	by         trace.GoID   // goroutine that caused the transition (unblocker)
	stack      string       // top frames at the transition
	reason     string
	blocking   bool // an epoll_wait entered right after runtime.Gosched: gnet's epoll_wait(-1)
}

type procSeg struct {
	start, end trace.Time
	state      trace.ProcState
	reason     string
	g          trace.GoID
}

type rng struct {
	name       string
	start, end trace.Time
	g          trace.GoID
}

type slow struct {
	peer  string
	ivcsw int64 // the client process's involuntary context switches during the call
	g     trace.GoID
	start trace.Time
	end   trace.Time
}

type parsed struct {
	path        string
	gsegs       map[trace.GoID][]seg
	psegs       map[trace.ProcID][]procSeg
	names       map[trace.GoID]string
	ranges      []rng
	slows       []slow
	first, last trace.Time
}

var verbose = flag.Bool("v", false, "print the event timeline of each slow call")
var minGap = flag.Duration("min", 200*time.Microsecond, "smallest interval worth reporting")

func main() {
	flag.Parse()
	var ps []*parsed
	wins := map[string][]slow{} // by peer, from the client traces
	for _, path := range flag.Args() {
		p, err := parse(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			continue
		}
		ps = append(ps, p)
		for _, s := range p.slows {
			if s.start >= p.first {
				wins[s.peer] = append(wins[s.peer], s)
			}
		}
	}
	seen := map[string]bool{} // a slow call is in several snapshots: once per side
	for _, p := range ps {
		side := "client"
		if strings.Contains(p.path, "-server-") {
			side = "server"
		}
		peer := strings.TrimSuffix(filepath.Base(p.path), ".trace")
		peer = peer[:strings.LastIndex(peer, "-"+side)]
		for _, s := range wins[peer] {
			if s.start < p.first || s.end > p.last {
				continue
			}
			key := fmt.Sprint(side, s.peer, s.end)
			if seen[key] {
				continue
			}
			seen[key] = true
			if side == "server" {
				s.g = -2 // the caller is in the other process
			}
			report(p.path, s, p.gsegs, p.psegs, p.names, p.ranges, peer+" "+side)
		}
	}
	combined()
	var keys []string
	for k := range dominant {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("\n== %s: %d slow calls; dominant class per call:\n", k, calls[k])
		for c, n := range dominant[k] {
			fmt.Printf("  %3d  %s\n", n, c)
		}
		fmt.Printf("time in all slow calls by class:\n")
		for c, d := range totals[k] {
			fmt.Printf("  %9.1fµs  %s\n", float64(d)/1e3, c)
		}
	}
}

func top(s trace.Stack, n int) string {
	var fs []string
	for f := range s.Frames() {
		fn := f.Func
		if i := strings.LastIndex(fn, "/"); i >= 0 {
			fn = fn[i+1:]
		}
		fs = append(fs, fmt.Sprintf("%s:%d", fn, f.Line))
		if len(fs) == n {
			break
		}
	}
	return strings.Join(fs, " < ")
}

func entry(s trace.Stack) string {
	last := ""
	for f := range s.Frames() {
		last = f.Func
	}
	if i := strings.LastIndex(last, "/"); i >= 0 {
		last = last[i+1:]
	}
	return last
}

func parse(path string) (*parsed, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := trace.NewReader(f)
	if err != nil {
		return nil, err
	}
	gsegs := map[trace.GoID][]seg{}
	psegs := map[trace.ProcID][]procSeg{}
	names := map[trace.GoID]string{}
	var ranges []rng
	open := map[string]rng{}
	var slows []slow
	var first, last trace.Time
	for {
		ev, err := r.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		t := ev.Time()
		if first == 0 {
			first = t
		}
		last = t
		if g := ev.Goroutine(); g != trace.NoGoroutine && names[g] == "" {
			if e := entry(ev.Stack()); e != "" {
				names[g] = e
			}
		}
		switch ev.Kind() {
		case trace.EventStateTransition:
			st := ev.StateTransition()
			switch st.Resource.Kind {
			case trace.ResourceGoroutine:
				g := st.Resource.Goroutine()
				_, to := st.Goroutine()
				if e := entry(st.Stack); e != "" {
					names[g] = e
				}
				ss := gsegs[g]
				if n := len(ss); n > 0 {
					ss[n-1].end = t
				}
				stk := top(st.Stack, 4)
				if stk == "" {
					stk = top(ev.Stack(), 4)
				}
				gsegs[g] = append(ss, seg{start: t, state: to, proc: ev.Proc(), by: ev.Goroutine(), stack: stk, reason: st.Reason})
			case trace.ResourceProc:
				p := st.Resource.Proc()
				_, to := st.Proc()
				ss := psegs[p]
				if n := len(ss); n > 0 {
					ss[n-1].end = t
				}
				psegs[p] = append(ss, procSeg{start: t, state: to, reason: st.Reason, g: ev.Goroutine()})
			}
		case trace.EventRangeBegin:
			rg := ev.Range()
			key := rg.Name + rg.Scope.String()
			open[key] = rng{name: rg.Name, start: t, g: ev.Goroutine()}
		case trace.EventRangeEnd:
			rg := ev.Range()
			key := rg.Name + rg.Scope.String()
			if o, ok := open[key]; ok {
				o.end = t
				ranges = append(ranges, o)
				delete(open, key)
			}
		case trace.EventLog:
			l := ev.Log()
			if l.Category == "slowcall" {
				f := strings.Fields(l.Message)
				ns, _ := strconv.ParseInt(f[1], 10, 64)
				iv := int64(-1)
				if len(f) > 2 {
					iv, _ = strconv.ParseInt(f[2], 10, 64)
				}
				slows = append(slows, slow{peer: f[0], g: ev.Goroutine(), start: t - trace.Time(ns), end: t, ivcsw: iv})
			}
		}
	}
	for g, ss := range gsegs {
		if n := len(ss); n > 0 && ss[n-1].end == 0 {
			ss[n-1].end = last
		}
		// gnet's Polling yields (Gosched) before every epoll_wait(-1) and
		// never before its epoll_wait(0) after a batch of events.
		for i := 2; i < len(ss); i++ {
			if ss[i].state == trace.GoSyscall && strings.Contains(ss[i].stack, "EpollWait") &&
				ss[i-1].state == trace.GoRunning && ss[i-2].state == trace.GoRunnable && ss[i-2].reason == "runtime.Gosched" {
				ss[i].blocking = true
			}
		}
		gsegs[g] = ss
	}
	for p, ss := range psegs {
		if n := len(ss); n > 0 && ss[n-1].end == 0 {
			ss[n-1].end = last
		}
		psegs[p] = ss
	}
	for _, o := range open {
		o.end = last
		ranges = append(ranges, o)
	}
	return &parsed{path, gsegs, psegs, names, ranges, slows, first, last}, nil
}

func overlap(a0, a1, b0, b1 trace.Time) time.Duration {
	s, e := max(a0, b0), min(a1, b1)
	if e <= s {
		return 0
	}
	return time.Duration(e - s)
}

func report(path string, s slow, gsegs map[trace.GoID][]seg, psegs map[trace.ProcID][]procSeg, names map[trace.GoID]string, ranges []rng, key string) {
	rel := func(t trace.Time) string { return fmt.Sprintf("%+8.1fµs", float64(t-s.start)/1e3) }
	fmt.Printf("== %s: slow call %v by g%d (%s)\n", path, time.Duration(s.end-s.start), s.g, names[s.g])
	// The caller's own states during the call.
	fmt.Printf("  caller g%d:\n", s.g)
	for _, x := range gsegs[s.g] {
		if d := overlap(x.start, x.end, s.start, s.end); d > 0 {
			fmt.Printf("    %s %-9v %8.1fµs on P%d by g%d(%s) [%s] %s\n", rel(x.start), x.state, float64(d)/1e3, x.proc, x.by, names[x.by], x.reason, x.stack)
		}
	}
	// Everything runnable, in a syscall or waiting long during the call.
	type row struct {
		g     trace.GoID
		state trace.GoState
		d     time.Duration
		x     seg
	}
	var rows []row
	for g, ss := range gsegs {
		for _, x := range ss {
			if x.state != trace.GoRunnable && x.state != trace.GoSyscall && x.state != trace.GoRunning {
				continue
			}
			if d := overlap(x.start, x.end, s.start, s.end); d >= *minGap {
				rows = append(rows, row{g, x.state, d, x})
			}
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].x.start < rows[j].x.start })
	fmt.Printf("  goroutines running, runnable or in a syscall >= %v during the call:\n", *minGap)
	for _, r := range rows {
		fmt.Printf("    g%-5d %-24s %-9v from %s for %8.1fµs (in call) P%d by g%d [%s] %s\n", r.g, names[r.g], r.state, rel(r.x.start), float64(r.d)/1e3, r.x.proc, r.x.by, r.x.reason, r.x.stack)
	}
	fmt.Printf("  procs:\n")
	var ps []trace.ProcID
	for p := range psegs {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	for _, p := range ps {
		for _, x := range psegs[p] {
			if d := overlap(x.start, x.end, s.start, s.end); d >= *minGap {
				fmt.Printf("    P%d %-8v from %s for %8.1fµs (in call) [%s] g%d\n", p, x.state, rel(x.start), float64(d)/1e3, x.reason, x.g)
			}
		}
	}
	for _, r := range ranges {
		if d := overlap(r.start, r.end, s.start, s.end); d > 0 {
			fmt.Printf("  range %q from %s for %8.1fµs (in call) g%d\n", r.name, rel(r.start), float64(d)/1e3, r.g)
		}
	}
	classify(s, gsegs, psegs, key)
	if *verbose {
		type ev struct {
			t    trace.Time
			line string
		}
		var evs []ev
		for g, ss := range gsegs {
			for _, x := range ss {
				if x.start >= s.start-trace.Time(100*time.Microsecond) && x.start <= s.end {
					evs = append(evs, ev{x.start, fmt.Sprintf("g%-5d %-22s -> %-9v P%d by g%d [%s] %s", g, names[g], x.state, x.proc, x.by, x.reason, x.stack)})
				}
			}
		}
		for p, ss := range psegs {
			for _, x := range ss {
				if x.start >= s.start && x.start <= s.end {
					evs = append(evs, ev{x.start, fmt.Sprintf("P%d -> %v [%s] g%d", p, x.state, x.reason, x.g)})
				}
			}
		}
		sort.Slice(evs, func(i, j int) bool { return evs[i].t < evs[j].t })
		for _, e := range evs {
			fmt.Printf("      %s %s\n", rel(e.t), e.line)
		}
	}
}

// totals sums, over all slow calls, the time of each class.
var totals = map[string]map[string]time.Duration{}
var dominant = map[string]map[string]int{}
var calls = map[string]int{}

type callInfo struct {
	s              slow
	client, server []string
}

var perCall = map[string]*callInfo{}

// rank orders the classes when the two processes disagree at an instant:
// a goroutine waiting for a P explains the instant better than a process
// that is merely waiting for the other.
var rank = []string{
	"runnable, a P held by a loop in a blocking epoll_wait",
	"runnable, a P held by a loop in a non-blocking epoll_wait",
	"runnable, a P held in a read/write syscall",
	"runnable, a P idle",
	"runnable, every P busy (Go code or scheduler)",
	"nothing runnable, a read/write syscall in progress",
	"nothing runnable, running",
	"nothing runnable or running (waiting on the kernel)",
}

func rankOf(c string) int {
	for i, r := range rank {
		if r == c {
			return i
		}
	}
	return len(rank)
}

func combined() {
	type agg struct {
		n, preempted int
		d            time.Duration
	}
	byPeer := map[string]map[string]*agg{}
	total := map[string]int{}
	for _, ci := range perCall {
		if ci.client == nil {
			continue
		}
		if ci.server == nil { // in-process: the client's trace has both nodes
			ci.server = ci.client
		}
		cls := map[string]int{}
		for i := range min(len(ci.client), len(ci.server)) {
			a, b := ci.client[i], ci.server[i]
			if rankOf(b) < rankOf(a) {
				a = b
			}
			cls[a]++
		}
		best := ""
		for c, n := range cls {
			if best == "" || n > cls[best] || n == cls[best] && rankOf(c) < rankOf(best) {
				best = c
			}
		}
		if byPeer[ci.s.peer] == nil {
			byPeer[ci.s.peer] = map[string]*agg{}
		}
		a := byPeer[ci.s.peer][best]
		if a == nil {
			a = &agg{}
			byPeer[ci.s.peer][best] = a
		}
		a.n++
		a.d += time.Duration(ci.s.end - ci.s.start)
		if ci.s.ivcsw > 0 {
			a.preempted++
		}
		total[ci.s.peer]++
	}
	for peer, m := range byPeer {
		fmt.Printf("\n== %s, client and server: %d slow calls; dominant class per call (calls, of them with the client preempted, their total time)\n", peer, total[peer])
		for _, c := range rank {
			if a := m[c]; a != nil {
				fmt.Printf("  %3d %3d %9.1fms  %s\n", a.n, a.preempted, float64(a.d)/1e6, c)
			}
		}
	}
}

func at(ss []seg, t trace.Time) *seg {
	i := sort.Search(len(ss), func(i int) bool { return ss[i].end > t })
	if i < len(ss) && ss[i].start <= t {
		return &ss[i]
	}
	return nil
}

func pat(ss []procSeg, t trace.Time) *procSeg {
	i := sort.Search(len(ss), func(i int) bool { return ss[i].end > t })
	if i < len(ss) && ss[i].start <= t {
		return &ss[i]
	}
	return nil
}

// classify samples the call every 5µs and labels each instant by what
// the scheduler was doing (see docs/PERFORMANCE.md, "Stalls at p99.9").
func classify(s slow, gsegs map[trace.GoID][]seg, psegs map[trace.ProcID][]procSeg, key string) {
	if totals[key] == nil {
		totals[key], dominant[key] = map[string]time.Duration{}, map[string]int{}
	}
	calls[key]++
	const step = trace.Time(5 * time.Microsecond)
	cls := map[string]time.Duration{}
	var steps []string
	for t := s.start; t < s.end; t += step {
		runnable, running, rw, heldEpoll, heldPoll, heldRW := 0, 0, 0, 0, 0, 0
		for _, ss := range gsegs {
			x := at(ss, t)
			if x == nil {
				continue
			}
			switch x.state {
			case trace.GoRunnable:
				runnable++
			case trace.GoRunning:
				running++
			case trace.GoSyscall:
				epoll := strings.Contains(x.stack, "EpollWait")
				if !epoll {
					rw++
				}
				// Does it still hold the P it entered the syscall on? Yes
				// while that P has been running since before the syscall.
				if x.proc >= 0 {
					if p := pat(psegs[x.proc], t); p != nil && p.state == trace.ProcRunning && p.start <= x.start {
						if epoll && x.blocking {
							heldEpoll++
						} else if epoll {
							heldPoll++
						} else {
							heldRW++
						}
					}
				}
			}
		}
		idle, busy := 0, 0
		for _, ss := range psegs {
			x := pat(ss, t)
			if x == nil {
				continue
			}
			if x.state == trace.ProcIdle {
				idle++
			} else if x.state == trace.ProcRunning {
				busy++
			}
		}
		var c string
		switch {
		case runnable > 0 && idle > 0:
			c = "runnable, a P idle"
		case runnable > 0 && heldEpoll > 0:
			c = "runnable, a P held by a loop in a blocking epoll_wait"
		case runnable > 0 && heldPoll > 0:
			c = "runnable, a P held by a loop in a non-blocking epoll_wait"
		case runnable > 0 && heldRW > 0:
			c = "runnable, a P held in a read/write syscall"
		case runnable > 0:
			c = "runnable, every P busy (Go code or scheduler)"
		case rw > 0:
			c = "nothing runnable, a read/write syscall in progress"
		case running > 0:
			c = "nothing runnable, running"
		default:
			c = "nothing runnable or running (waiting on the kernel)"
		}
		cls[c] += time.Duration(step)
		steps = append(steps, c)
	}
	var best string
	for c, d := range cls {
		totals[key][c] += d
		if best == "" || d > cls[best] {
			best = c
		}
		fmt.Printf("  class %-55s %8.1fµs\n", c, float64(d)/1e3)
	}
	dominant[key][best]++
	fmt.Printf("  dominant: %s\n", best)
	ck := fmt.Sprint(s.peer, s.end)
	if perCall[ck] == nil {
		perCall[ck] = &callInfo{s: s}
	}
	if strings.HasSuffix(key, "server") {
		perCall[ck].server = steps
	} else {
		perCall[ck].client = steps
	}
}
