package node_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/services/keyseq"
	"github.com/clusterinfra/ci/services/node"
)

// The multi-process tests re-execute this test binary as node processes
// (as engine/nodedown_test.go does), so that a node can be killed with
// SIGKILL or stopped with SIGSTOP like a real one.
const (
	envChild   = "CI_NODE_CHILD"   // set: run as a node process
	envConfig  = "CI_NODE_CONFIG"  // cluster.toml
	envNum     = "CI_NODE_NUM"     // node number
	envData    = "CI_NODE_DATA"    // data directory
	envStretch = "CI_NODE_STRETCH" // timing stretch factor (1: the file's profile as is)
	envListen  = "CI_NODE_LISTEN"  // listen here instead of the configured address
	envPeers   = "CI_NODE_PEERS"   // "2=host:port,3=host:port": dial peers here (through proxies)
	envHogProc = "CI_HOG_PROC"     // set: run as an external CPU hog process (cpuhog_test.go)
)

// timedTransition is a transition and when (wall clock, ns) the child
// applied it.
type timedTransition struct {
	T  clms.Transition `json:"t"`
	At int64           `json:"at"`
}

// timedKey is a key-service record and when (wall clock, ns) the child
// applied it.
type timedKey struct {
	K  clms.KeyRecord `json:"k"`
	At int64          `json:"at"`
}

type childReport struct {
	Status node.Status `json:"status"`
	// Stats are the runner's counters; LateTicks is ci_clms_late_ticks_total
	// (ticks the core received late, all at once: the process was starved).
	Stats     clms.Stats        `json:"stats"`
	LateTicks uint64            `json:"late_ticks"`
	Applied   []timedTransition `json:"applied"`
	Keys      []timedKey        `json:"keys"`
	Keyseq    keyseq.Stats      `json:"keyseq"`
}

// runChild runs a node process if this is one, and reports whether it was.
// Protocol on stdin/stdout, one line each: the child prints "ready"; to
// "status" it answers "status <json childReport>"; "hog D" runs GOMAXPROCS
// busy goroutines in the node's process for the duration D ("hog"); "next N" takes N ids
// from keyseq ("next <json Range>" or "error <text>"); "nextat O E N" asks
// node O for N ids in epoch E, once (the same answers); "shutdown" leaves the
// cluster and exits 0; EOF closes and exits 0. A fence under halt exits
// with node.ExitFenced, any other fatal error with 1.
func runChild() bool {
	if os.Getenv(envHogProc) != "" {
		hogProc()
		return true
	}
	if os.Getenv(envChild) == "" {
		return false
	}
	os.Exit(child())
	return true
}

func child() int {
	fail := func(err error) int { fmt.Println("error", err); return 1 }
	cfg, err := clms.LoadConfig(os.Getenv(envConfig))
	if err != nil {
		return fail(err)
	}
	num, _ := strconv.Atoi(os.Getenv(envNum))
	var log *slog.Logger
	if os.Getenv("CI_TEST_LOG") != "" {
		lvl := slog.LevelInfo
		if os.Getenv("CI_TEST_LOG") == "debug" {
			lvl = slog.LevelDebug
		}
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	}
	var mu sync.Mutex
	var applied []timedTransition
	var keys []timedKey
	// Every node registers keyseq (the registry must be the same
	// everywhere); the cluster file says which nodes may run it.
	reg := &clms.KeyServices{}
	seq, err := keyseq.Register(reg, keyseq.Config{Block: 10})
	if err != nil {
		return fail(err)
	}
	ncfg := node.Config{Cluster: cfg, Node: clms.NodeNum(num), DataDir: os.Getenv(envData), Logger: log, KeyServices: reg,
		OnApplied: func(rs []clms.Record) {
			now := time.Now().UnixNano()
			mu.Lock()
			for _, r := range rs {
				switch r.Kind {
				case clms.RecordTransition:
					applied = append(applied, timedTransition{T: r.Transition, At: now})
				case clms.RecordKeyService:
					keys = append(keys, timedKey{K: r.Key, At: now})
				}
			}
			mu.Unlock()
		},
		Engine: func(c *engine.Config) {
			c.EventLoops = 1
			if l := os.Getenv(envListen); l != "" {
				c.ListenAddr = l
			}
			for _, kv := range strings.Split(os.Getenv(envPeers), ",") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					n, _ := strconv.Atoi(k)
					c.Peers[engine.NodeNum(n)] = v
				}
			}
		}}
	if k, _ := strconv.Atoi(os.Getenv(envStretch)); k > 1 {
		t := clmstest.Stretch(cfg.Timing, time.Duration(k))
		ncfg.Timing = &t
	}
	n, err := node.New(ncfg)
	if err != nil {
		return fail(err)
	}
	if err := seq.Attach(n.Engine(), n.Runner()); err != nil {
		return fail(err)
	}
	if err := n.Start(); err != nil {
		return fail(err)
	}
	var out sync.Mutex
	say := func(s string) { out.Lock(); fmt.Println(s); out.Unlock() }
	say("ready")
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		select {
		case <-n.Done():
			if errors.Is(n.Err(), clms.ErrFenced) {
				// An upper bound of the fence's time, for the parent to
				// compare with the survivors' NODEDOWN.
				say(fmt.Sprintf("fenced %d %s", time.Now().UnixNano(), n.Err()))
				return node.ExitFenced
			}
			return fail(n.Err())
		case l, ok := <-lines:
			switch {
			case !ok:
				_ = n.Close()
				return 0
			case l == "status":
				mu.Lock()
				rep := childReport{Status: n.Status(), Stats: n.Runner().Status().Stats, LateTicks: lateTicks(n),
					Applied: append([]timedTransition(nil), applied...),
					Keys:    append([]timedKey(nil), keys...), Keyseq: seq.Stats()}
				mu.Unlock()
				b, _ := json.Marshal(rep)
				say("status " + string(b))
			case strings.HasPrefix(l, "hog "):
				d, err := time.ParseDuration(strings.TrimPrefix(l, "hog "))
				if err != nil {
					return fail(err)
				}
				stop := make(chan struct{})
				defer close(stop) // the process exits right after: no goroutine outlives it
				go hog(d, stop)
				say("hog")
			case strings.HasPrefix(l, "next"):
				say(childNext(seq, l))
			case l == "shutdown":
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := n.Shutdown(ctx)
				cancel()
				if err != nil {
					return fail(err)
				}
				return 0
			}
		}
	}
}

// childNext carries out "next N" or "nextat O E N".
func childNext(seq *keyseq.Service, l string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rg keyseq.Range
	var err error
	var owner, epoch, count uint64
	if _, serr := fmt.Sscanf(l, "nextat %d %d %d", &owner, &epoch, &count); serr == nil {
		rg, err = seq.NextAt(ctx, clms.NodeNum(owner), epoch, count)
	} else if _, serr := fmt.Sscanf(l, "next %d", &count); serr == nil {
		rg, err = seq.Next(ctx, count)
	} else {
		err = serr
	}
	if err != nil {
		return "error " + err.Error()
	}
	b, _ := json.Marshal(rg)
	return "next " + string(b)
}

// lateTicks reads ci_clms_late_ticks_total from the node's metrics.
func lateTicks(n *node.Node) uint64 {
	var b strings.Builder
	n.Metrics().WritePrometheus(&b)
	for l := range strings.Lines(b.String()) {
		if rest, ok := strings.CutPrefix(l, "ci_clms_late_ticks_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			x, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return x
		}
	}
	return 0
}

// hog keeps GOMAXPROCS goroutines busy hashing for d (or until stop): as
// many runnable goroutines as the scheduler has Ps, competing with the
// node's own for every one of them.
func hog(d time.Duration, stop <-chan struct{}) {
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for time.Now().Before(end) {
				select {
				case <-stop:
					return
				default:
				}
				for range 64 {
					s := sha256.Sum256(buf)
					buf[0] = s[0]
				}
			}
		})
	}
	wg.Wait()
}

// hogProc is the external hog process: it hogs until killed (the parent
// pins it to the node's CPU and kills it when the run ends).
func hogProc() {
	hog(24*time.Hour, nil)
}
