package hub

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sourcegraph/jsonrpc2"

	"runhub/store"
)

// TestStoreDownIsUnavailable: a /ws request whose store lookup failed
// because the store is down or busy is answered CodeUnavailable (retry
// later), not the internal error of a fault.
func TestStoreDownIsUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		code int64
	}{
		{fmt.Errorf("get run: %w", fmt.Errorf("%w: unexpected EOF", store.ErrUnavailable)), CodeUnavailable},
		{errors.Join(errors.New("x"), store.ErrBusy), CodeUnavailable},
		{errors.New("unexpected EOF"), jsonrpc2.CodeInternalError},
	} {
		if got := storeError(c.err); got.Code != c.code {
			t.Errorf("%v: code %d, want %d", c.err, got.Code, c.code)
		}
	}
}
