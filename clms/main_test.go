package clms_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine/enginetest"
)

// clms's tests start real engine nodes (the config tests do), whose gnet keeps
// a process-wide worker pool: enginetest knows which goroutines are gnet's.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }
