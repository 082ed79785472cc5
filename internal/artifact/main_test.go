package artifact

import (
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
)

func TestMain(m *testing.M) { testbed.Main(m) }
