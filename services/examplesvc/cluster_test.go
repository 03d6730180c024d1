package examplesvc

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine/enginetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }
