package rest

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"runhub/store"
)

// authLogPerSecond bounds the warn lines of refused credentials, over all
// clients (with a burst of as many): enough to see who is knocking and with
// which key, few enough that a client flooding bad keys cannot fill the disk
// or drown every other line. Lines left out are counted, and the next line
// written says how many.
const authLogPerSecond = 10

// authLog rate-limits the lines of refused credentials.
type authLog struct {
	mu         sync.Mutex
	lim        *rate.Limiter
	suppressed int
}

func newAuthLog() *authLog {
	return &authLog{lim: rate.NewLimiter(authLogPerSecond, authLogPerSecond)}
}

// allow reports whether a line may be written at now and, if so, how many
// were left out since the last one.
func (a *authLog) allow(now time.Time) (ok bool, suppressed int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.lim.AllowN(now, 1) {
		a.suppressed++
		return false, 0
	}
	suppressed, a.suppressed = a.suppressed, 0
	return true, suppressed
}

// apiKeyLen and apiKeyPrefixLen are the lengths of every key
// store.GenerateAPIKey makes and of its public prefix.
var apiKeyLen, apiKeyPrefixLen = func() (int, int) {
	secret, prefix, _ := store.GenerateAPIKey()
	return len(secret), len(prefix)
}()

// keyPrefix is the public prefix of a presented secret that is shaped like
// a runhub key (the prefix `keys list` shows), else "": the rest of the
// secret, or anything that may be another system's secret pasted by
// mistake, is never logged.
func keyPrefix(secret string) string {
	if len(secret) != apiKeyLen || !strings.HasPrefix(secret, store.APIKeyPrefix) {
		return ""
	}
	for _, c := range secret[len(store.APIKeyPrefix):] {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return ""
		}
	}
	return secret[:apiKeyPrefixLen]
}

// logAuthFailure logs a refused credential (status 401 or 403 with its
// contract code) at warn: which kind was presented, a key's prefix (never
// the key or token), and the peer, behind the authLogPerSecond limit.
func (s *Server) logAuthFailure(r *http.Request, status int, code string) {
	ok, suppressed := s.authLog.allow(time.Now())
	if !ok {
		return
	}
	attrs := []any{"status", status, "code", code, "method", r.Method, "path", r.URL.Path, "peer", r.RemoteAddr}
	switch secret := bearer(r); {
	case connectionToken(r) != "":
		attrs = append(attrs, "credential", "token")
	case secret == "":
		attrs = append(attrs, "credential", "none")
	case keyPrefix(secret) != "":
		attrs = append(attrs, "credential", "api_key", "key_prefix", keyPrefix(secret))
	default:
		attrs = append(attrs, "credential", "malformed")
	}
	if s.fromTrustedProxy(r) {
		// The last entry is the one the trusted proxy added: the address
		// it saw; earlier ones are whatever the client sent.
		xff := r.Header.Get("X-Forwarded-For")
		if ff := strings.TrimSpace(xff[strings.LastIndex(xff, ",")+1:]); ff != "" {
			attrs = append(attrs, "client", ff)
		}
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	s.log.WarnContext(r.Context(), "authentication failed", attrs...)
}
