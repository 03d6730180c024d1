package engine

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestMetricsExposed scrapes a node the way Prometheus would and checks
// that the series users alert on are there and count what happened.
func TestMetricsExposed(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	for i := 0; i < 5; i++ {
		if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("0123456789"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc, Proc: 9}, nil, nil); err == nil {
		t.Fatal("call to a missing procedure succeeded")
	}
	var client, server bytes.Buffer
	nodes[0].Metrics().WritePrometheus(&client)
	nodes[1].Metrics().WritePrometheus(&server)

	value := func(out *bytes.Buffer, series string) float64 {
		t.Helper()
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
		m := re.FindSubmatch(out.Bytes())
		if m == nil {
			t.Fatalf("series %s missing from:\n%s", series, out.String())
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	ch := ChanFirstService.String()
	checks := []struct {
		out    *bytes.Buffer
		series string
		want   func(float64) bool
	}{
		{&client, `ci_ics_rpcs_total{node="1",outcome="ok"}`, func(v float64) bool { return v == 5 }},
		{&client, `ci_ics_rpcs_total{node="1",outcome="remote_error"}`, func(v float64) bool { return v == 1 }},
		{&client, fmt.Sprintf(`ci_ics_frames_out_total{node="1",peer="2",channel="%s"}`, ch), func(v float64) bool { return v == 6 }},
		{&client, fmt.Sprintf(`ci_ics_bytes_out_total{node="1",peer="2",channel="%s"}`, ch), func(v float64) bool { return v == 6*32+5*10 }},
		{&client, `ci_ics_frames_in_total{node="1",peer="2",channel="reply"}`, func(v float64) bool { return v == 6 }},
		{&client, `ci_ics_rpc_duration_seconds_count{node="1"}`, func(v float64) bool { return v == 6 }},
		{&client, fmt.Sprintf(`ci_ics_credit_available_bytes{node="1",peer="2",channel="%s"}`, ch), func(v float64) bool { return v > 0 }},
		{&server, fmt.Sprintf(`ci_ics_frames_in_total{node="2",peer="1",channel="%s"}`, ch), func(v float64) bool { return v == 6 }},
		{&server, `ci_ics_requests_by_priority_total{node="2",direction="in",priority="0"}`, func(v float64) bool { return v == 6 }},
		{&server, fmt.Sprintf(`ci_ics_credit_window_bytes{node="2",peer="1",channel="%s"}`, ch), func(v float64) bool { return v == 256<<10 }},
		{&server, `ci_ics_handles{node="2",service="echo",state="busy"}`, func(v float64) bool { return v == 0 }},
	}
	for _, c := range checks {
		if v := value(c.out, c.series); !c.want(v) {
			t.Errorf("%s = %v", c.series, v)
		}
	}
}
