package stub

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine/enginetest"
)

// TestMain fails the run if a test leaves a goroutine behind (beyond the
// pool gnet starts when the engine is linked in).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }
