package metricstest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestCheck: what promtool check metrics says of a scrape, Check says too,
// and a scrape Prometheus would refuse is an error.
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string // "family: problem", sorted as promlint sorts
		parseErr   bool
	}{
		{name: "documented", body: "# HELP a_total A count.\n# TYPE a_total counter\na_total{node=\"1\"} 3\n" +
			"# HELP b_bytes A size.\n# TYPE b_bytes gauge\nb_bytes 1\n"},
		{name: "no help", body: "# TYPE a_total counter\na_total 3\n", want: []string{"a_total: no help text"}},
		{name: "bare line", body: "a 3\n", want: []string{"a: no help text"}},
		{name: "gauge named _total", body: "# HELP a_total A count.\n# TYPE a_total gauge\na_total 3\n",
			want: []string{`a_total: non-counter metrics should not have "_total" suffix`}},
		{name: "counter without _total", body: "# HELP a A count.\n# TYPE a counter\na 3\n",
			want: []string{`a: counter metrics should have "_total" suffix`}},
		{name: "not base unit", body: "# HELP a_milliseconds A time.\n# TYPE a_milliseconds gauge\na_milliseconds 3\n",
			want: []string{`a_milliseconds: use base unit "seconds" instead of "milliseconds"`}},
		{name: "HELP twice", body: "# HELP a A.\n# HELP a A.\n# TYPE a gauge\na 1\n", parseErr: true},
		{name: "not a number", body: "# HELP a A.\n# TYPE a gauge\na one\n", parseErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fams, problems, err := Check(tc.body)
			if tc.parseErr {
				if err == nil {
					t.Fatalf("parsed: %v %v", fams, problems)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range problems {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("problems %q, want %q", got, tc.want)
			}
			if len(fams) == 0 {
				t.Fatal("no families")
			}
		})
	}
}

func TestSummary(t *testing.T) {
	got := Summary([]Problem{{"ci_clms_a", "x"}, {"ci_clms_b", "y"}, {"ci_ics_c_total", "z"}, {"go_d", "w"}, {"process_e", "v"}, {"process_f", "u"}})
	if want := "ci_clms: 2, ci_ics: 1, go: 1, process: 2"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

// TestLintFails: Lint fails the test on a problem and names it.
func TestLintFails(t *testing.T) {
	var rec recorder
	Lint(&rec, "# TYPE a_total gauge\na_total 1\n")
	if !rec.failed || !strings.Contains(rec.msg, "a_total: no help text") || !strings.Contains(rec.msg, "2 problems") {
		t.Fatalf("failed=%v %q", rec.failed, rec.msg)
	}
	rec = recorder{}
	Lint(&rec, "# HELP a_total A count.\n# TYPE a_total counter\na_total 1\n")
	if rec.failed {
		t.Fatalf("a clean scrape failed: %q", rec.msg)
	}
}

// recorder is a testing.TB that records a failure instead of failing.
type recorder struct {
	testing.TB
	failed bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.failed = true
	r.msg = fmt.Sprintf(format, args...)
}
