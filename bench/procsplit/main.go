// Command procsplit measures which side's GOMAXPROCS costs ICS latency: an
// in-process ICS client at GOMAXPROCS 1 and 2 against ICS servers (cibench
// serve, in child processes) at GOMAXPROCS 1 and 2, between raw TCP blocks.
//
// Each round runs a raw TCP block, the four client/server pairs in a
// rotating order, and a raw TCP block again, 64 B echoes, one call in
// flight, --calls calls per block (the client's GOMAXPROCS is switched
// around its blocks, never per call). A round counts only when both raw
// TCP blocks ran in raw TCP's fast mode (p50 under 30 µs), so the ratios
// are those of the fast mode that a median over all rounds hides; it
// prints each pair's median p50 and median ratio to the mean of the two
// raw blocks. docs/PERFORMANCE.md, "Callers read their own replies", has
// what it measured.
//
//	go build -o bin/ ./tools/cibench && go run ./bench/procsplit --rounds=60
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"time"

	"github.com/clusterinfra/ci/bench"
)

func main() {
	cibench := flag.String("cibench", "bin/cibench", "the cibench binary that serves the peers")
	rounds := flag.Int("rounds", 60, "rounds")
	calls := flag.Int("calls", 400, "calls per block")
	flag.Parse()
	if err := run(*cibench, *rounds, *calls); err != nil {
		fmt.Fprintln(os.Stderr, "procsplit:", err)
		os.Exit(1)
	}
}

// server is a cibench serve child; closing stdin ends it.
type server struct {
	cmd   *exec.Cmd
	stdin io.Closer
}

func serve(cibench string, procs int, args ...string) (string, *server, error) {
	cmd := exec.Command(cibench, append([]string{"--quiet", "serve"}, args...)...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", procs))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	s := &server{cmd: cmd, stdin: in}
	line, err := bufio.NewReader(out).ReadBytes('\n')
	var r struct{ Addr string }
	if err == nil {
		err = json.Unmarshal(line, &r)
	}
	if err == nil && r.Addr == "" {
		err = fmt.Errorf("no address in %q", line)
	}
	if err != nil {
		s.stop()
		return "", nil, fmt.Errorf("cibench serve %v: %w", args, err)
	}
	return r.Addr, s, nil
}

func (s *server) stop() {
	_ = s.stdin.Close()
	_ = s.cmd.Wait()
}

type pair struct {
	name        string
	client      *bench.ICSClient
	clientProcs int
	p50s, ratio []float64
}

func run(cibench string, rounds, calls int) error {
	req, err := bench.NewRequest(64, 64)
	if err != nil {
		return err
	}
	rawAddr, rawSrv, err := serve(cibench, runtime.NumCPU(), "--peer=raw")
	if err != nil {
		return err
	}
	defer rawSrv.stop()
	raw, err := (&bench.Raw{}).Dial(rawAddr)
	if err != nil {
		return err
	}
	defer raw.Close()
	var pairs []*pair
	for _, sp := range []int{1, 2} {
		c, err := (&bench.ICS{}).NewClient()
		if err != nil {
			return err
		}
		defer c.Close()
		addr, srv, err := serve(cibench, sp, "--peer=ics", "--client-addr="+c.Addr())
		if err != nil {
			return err
		}
		defer srv.stop()
		if err := c.Connect(addr); err != nil {
			return err
		}
		for _, cp := range []int{1, 2} {
			pairs = append(pairs, &pair{name: fmt.Sprintf("client GOMAXPROCS=%d, server GOMAXPROCS=%d", cp, sp), client: c, clientProcs: cp})
		}
	}
	var resp []byte
	block := func(call func(req, resp []byte) ([]byte, error), procs int) (time.Duration, error) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		d := make([]time.Duration, calls)
		for i := range d {
			t0 := time.Now()
			var err error
			if resp, err = call(req, resp[:0]); err != nil {
				return 0, err
			}
			d[i] = time.Since(t0)
		}
		slices.Sort(d)
		return d[len(d)/2], nil
	}
	procs := runtime.GOMAXPROCS(0)
	var rawP50s []float64
	for r := range rounds {
		before, err := block(raw.Call, procs)
		if err != nil {
			return err
		}
		p50 := make([]time.Duration, len(pairs))
		for k := range pairs {
			i := (k + r) % len(pairs)
			if p50[i], err = block(pairs[i].client.Call, pairs[i].clientProcs); err != nil {
				return err
			}
		}
		after, err := block(raw.Call, procs)
		if err != nil {
			return err
		}
		if before >= bench.FastModeThreshold || after >= bench.FastModeThreshold {
			continue
		}
		base := float64(before+after) / 2
		rawP50s = append(rawP50s, base/1e3)
		for i, p := range pairs {
			p.p50s = append(p.p50s, float64(p50[i])/1e3)
			p.ratio = append(p.ratio, float64(p50[i])/base)
		}
	}
	fmt.Printf("%d of %d rounds in raw TCP's fast mode; raw TCP p50 median %.1f µs (%d calls a block)\n", len(rawP50s), rounds, median(rawP50s), calls)
	for _, p := range pairs {
		fmt.Printf("  %-40s p50 %5.1f µs  ratio to raw %.2f\n", p.name, median(p.p50s), median(p.ratio))
	}
	return nil
}

func median(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	slices.Sort(x)
	return x[len(x)/2]
}
