package engine

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperNofileEnv lowers RLIMIT_NOFILE in a re-executed helper node (see
// runHelperNode), never in the test process itself.
const helperNofileEnv = "CI_HELPER_NOFILE"

func init() {
	if v := os.Getenv(helperNofileEnv); v != "" && os.Getenv(helperEnv) != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err == nil {
			err = unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n})
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
}

// floodIdle opens count idle TCP connections to addr, spread over source
// addresses 127.0.<net>.1.. so that no per-address limit applies to most of
// them; it returns them for the caller to close.
func floodIdle(t testing.TB, addr string, subnet, perSource, count int) []net.Conn {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	for i := 0; i < count; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := fmt.Sprintf("127.0.%d.%d", subnet, 1+i/perSource)
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return // the kernel's queue is full: as good as shed
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return conns
}

// TestDescriptorExhaustionSurvived (issue 8 point 0): a node whose process
// runs out of descriptors under a flood of idle connections keeps its
// members' links, sheds the newcomers, and accepts again once the flood
// ends. The node runs in a child with RLIMIT_NOFILE lowered to 160: once
// with the default MaxConnections (a quarter of that), which sheds before
// the process runs out, and once with no such cap, where accept itself
// fails with EMFILE.
func TestDescriptorExhaustionSurvived(t *testing.T) {
	for _, tc := range []struct {
		name, maxConns string
		counter        string // the limit the child must have counted
	}{
		{"connection cap", "", "connections="},
		{"EMFILE", "100000", "descriptors="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(helperNofileEnv, "160")
			t.Setenv("CI_HELPER_MAXCONNS", tc.maxConns)
			testDescriptorExhaustion(t, tc.counter)
		})
	}
}

func testDescriptorExhaustion(t *testing.T, counter string) {
	n := startCluster(t, 1, nil)[0]
	ch := startChild(t, "127.0.0.2:0", n.Addr())
	if err := n.SetPeer(2, ch.addr); err != nil {
		t.Fatal(err)
	}
	call := func(what string) error {
		got, err := n.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte(what), nil)
		if err == nil && string(got) != what {
			err = fmt.Errorf("reply %q", got)
		}
		return err
	}
	if err := call("before"); err != nil {
		t.Fatalf("call before the flood: %v", err)
	}

	// 400 idle connections from 20 addresses: far more descriptors than
	// the child has, each address under MaxUnauthPerSource.
	flood := floodIdle(t, ch.addr, 5, 20, 400)
	t.Logf("%d flood connections established", len(flood))
	if err := call("during"); err != nil {
		t.Errorf("call on the member's link during the flood: %v", err)
	}
	_, _ = ch.stdin.Write([]byte("limits\n"))
	l := ch.expect(t, "limits ")
	t.Log(l)
	if strings.Contains(l, counter+"0 ") || strings.HasSuffix(l, counter+"0") {
		t.Errorf("the child did not count the limit %s: %s", counter, l)
	}
	for _, c := range flood {
		_ = c.Close()
	}

	// Recovered: a member's new connections are accepted again.
	n.NodeDown(2, nil)
	n.NodeUp(2)
	var err error
	eventually(t, "a call on new connections after the flood", func() bool {
		err = call("after")
		return err == nil
	})
	select {
	case l := <-ch.lines:
		t.Fatalf("child said %q", l)
	default:
	}
}
