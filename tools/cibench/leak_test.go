package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine/enginetest"
)

// TestMain fails the run if a test leaves a goroutine behind: the
// benchmark peers and demo nodes these tests start must all be stopped.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }
