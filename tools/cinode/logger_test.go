package main

import (
	"bytes"
	"regexp"
	"testing"
)

// TestTextLogStampsMicroseconds: text log lines carry the time to the
// microsecond, so that one failover's steps, microseconds apart, can be
// put in order across several nodes' logs; json keeps its own stamps.
func TestTextLogStampsMicroseconds(t *testing.T) {
	for format, want := range map[string]string{
		"text": `^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d) level=DEBUG msg=step node=1\n$`,
		"json": `^\{"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)","level":"DEBUG","msg":"step","node":1\}\n$`,
	} {
		var b bytes.Buffer
		newLogger(&b, format, "debug").Debug("step", "node", 1)
		if !regexp.MustCompile(want).MatchString(b.String()) {
			t.Errorf("%s: %q, want it to match %s", format, b.String(), want)
		}
	}
}
