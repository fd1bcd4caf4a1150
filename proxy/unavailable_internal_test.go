package proxy

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sourcegraph/jsonrpc2"

	"runhub/store"
)

// TestStoreDownIsUnavailable: an agent write the store could not take
// because it is down or busy (wrapped at any depth) is answered
// CodeUnavailable, which the agent retries with the same seq, not the
// internal error of a fault; other failures stay internal, their text
// unshown.
func TestStoreDownIsUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		code int64
	}{
		{fmt.Errorf("begin: %w", fmt.Errorf("%w: conn closed", store.ErrUnavailable)), CodeUnavailable},
		{errors.Join(errors.New("commit"), store.ErrBusy), CodeUnavailable},
		{errors.New("unexpected EOF"), jsonrpc2.CodeInternalError},
	} {
		got := storeRPCError(c.err)
		if got.Code != c.code {
			t.Errorf("%v: code %d, want %d", c.err, got.Code, c.code)
		}
		if got.Message == c.err.Error() {
			t.Errorf("%v: the error's text reached the agent", c.err)
		}
	}
}
