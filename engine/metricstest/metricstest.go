// Package metricstest checks a Prometheus scrape the way `promtool check
// metrics` does, without the promtool binary, so that every test run checks
// what Prometheus will scrape:
//
//	body := scrape(t, "/metrics")
//	metricstest.Lint(t, body) // fails the test on a parse error or a lint problem
//
// It parses the text with expfmt (Prometheus' own parser: a duplicate
// family, a bad label or a histogram without le fails here) and lints it
// with client_golang's promlint, the library promtool uses: every family
// needs HELP text, counters end in _total and nothing else does, units are
// base units, and so on. It is for tests only: nothing outside _test.go
// files should import it.
package metricstest

import (
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Problem is one thing wrong with a family.
type Problem struct {
	Family string
	Text   string
}

func (p Problem) String() string { return p.Family + ": " + p.Text }

// Check parses body (Prometheus text format) and lints it. It returns the
// parsed families and every problem promlint finds; err is a parse error.
func Check(body string) (map[string]*dto.MetricFamily, []Problem, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	found, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		return nil, nil, err
	}
	out := make([]Problem, len(found))
	for i, f := range found {
		out[i] = Problem{Family: f.Metric, Text: f.Text}
	}
	return fams, out, nil
}

// Summary counts problems by family group: the name up to its second
// underscore for ci_* families (ci_ics, ci_clms), up to its first for the
// rest (go, process).
func Summary(problems []Problem) string {
	n := map[string]int{}
	for _, p := range problems {
		n[group(p.Family)]++
	}
	var b strings.Builder
	for _, g := range slices.Sorted(maps.Keys(n)) {
		fmt.Fprintf(&b, "%s: %d, ", g, n[g])
	}
	return strings.TrimSuffix(b.String(), ", ")
}

func group(family string) string {
	parts := strings.SplitN(family, "_", 3)
	if parts[0] == "ci" && len(parts) > 1 {
		return "ci_" + parts[1]
	}
	return parts[0]
}

// Lint fails t if body does not parse or has a lint problem, naming every
// problem and counting them by family group. It returns the parsed
// families for further checks.
func Lint(t testing.TB, body string) map[string]*dto.MetricFamily {
	t.Helper()
	fams, problems, err := Check(body)
	if err != nil {
		t.Fatalf("the scrape does not parse: %v\n%s", err, body)
	}
	if len(problems) == 0 {
		return fams
	}
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = p.String()
	}
	t.Errorf("promlint: %d problems (%s):\n%s", len(problems), Summary(problems), strings.Join(lines, "\n"))
	return fams
}

// Promtool runs `promtool check metrics` on body where promtool is
// installed (Debian: apt-get install prometheus), and fails t on what it
// reports; where it is not, it logs that and checks nothing: Lint checks
// the same rules without it. It reports whether promtool ran.
func Promtool(t testing.TB, body string) bool {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: metricstest.Lint checked the scrape without it")
		return false
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	return true
}
