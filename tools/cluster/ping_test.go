package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/services/admin"
)

// TestPing: cluster ping through two endpoints backed by real engine
// nodes: the caller is --from or the first endpoint that is not N; the
// node's bounds come back as usage errors naming the field; calls that
// fail are counted by code and make the exit status 1.
func TestPing(t *testing.T) {
	engines := enginetest.StartCluster(t, 2, nil)
	n1 := startNode(t, 1, admin.Config{Pinger: engines[0]})
	n2 := startNode(t, 2, admin.Config{Pinger: engines[1]})
	eps := []string{"-e", n1.srv.Addr(), "-e", n2.srv.Addr()}

	code, stdout, stderr := cluster(t, append(eps, "--json", "ping", "2", "--calls", "5", "--size", "100")...)
	var res admin.PingResult
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if res.From != 1 || res.Node != 2 || res.Calls != 5 || res.Size != 100 || res.Errors != 0 || res.Latency.P50 <= 0 || res.Latency.P50 > res.Latency.Max {
		t.Errorf("%+v", res)
	}

	code, stdout, stderr = cluster(t, append(eps, "ping", "1", "--from", "2", "--calls", "3", "--priority", "2")...)
	if code != 0 || !strings.Contains(stdout, "node 2 -> node 1: 3 calls of 64 B at priority 2") || !strings.Contains(stdout, "rtt p50/p90/p99/p99.9/max = ") {
		t.Errorf("--from 2: exit %d\n%s\n%s", code, stdout, stderr)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"ping", "2", "--from", "2"}, "a ping needs two nodes"},
		{[]string{"ping", "0"}, "node numbers start at 1"},
		{[]string{"ping", "2", "--calls", "0"}, "--calls 0"},
		{[]string{"ping", "2", "--duration", "2m"}, "--duration 2m0s"},
		{[]string{"ping", "2", "--size", "99999999"}, "size 99999999"},
		{[]string{"ping", "2", "--concurrency", "5000"}, "concurrency 5000"},
	} {
		code, _, stderr := cluster(t, append(eps, c.args...)...)
		if code != exitBadUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, want %d naming %q\n%s", c.args, code, exitBadUsage, c.want, stderr)
		}
	}

	// Node 3 is not a peer of the engines: every call fails.
	code, stdout, stderr = cluster(t, append(eps, "ping", "3", "--from", "1", "--calls", "1000")...)
	if code != exitFailed || !strings.Contains(stdout, "errors: ") || !strings.Contains(stdout, "unknown_host") || !strings.Contains(stderr, "failed") {
		t.Errorf("ping of a node that is not a peer: exit %d\n%s\n%s", code, stdout, stderr)
	}

	code, stdout, _ = cluster(t, "ping", "--help")
	if code != 0 || !strings.Contains(stdout, "Examples:") || !strings.Contains(stdout, "cluster ping 2 --from 1") {
		t.Errorf("--help: exit %d\n%s", code, stdout)
	}
}
