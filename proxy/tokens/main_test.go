package tokens_test

import (
	"testing"

	"runhub/store/teststore"
)

// TestMain stops PostgreSQL's throwaway server when the suite runs on it
// (RUNHUB_TEST_BACKEND=postgres).
func TestMain(m *testing.M) { teststore.Main(m) }
