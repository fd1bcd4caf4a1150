package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"runhub/store"
)

// SandboxClient forwards commands to HTTP sandboxes: POST
// {sandbox_url}/command with a fresh connection token. It is an SSRF
// guard as much as a client: only http(s) URLs whose host is on the
// allow-list are called, redirects are never followed, and a connection to
// a loopback, private or link-local address is refused unless that address
// itself is on the allow-list (so an allow-listed name that resolves to an
// internal address is still refused).
type SandboxClient struct {
	allow  map[string]bool // host names and IP literals, lower case
	client *http.Client
}

// errInternalAddress: an allowed name resolved to an internal address.
var errInternalAddress = errors.New("sandbox: refusing internal address")

// NewSandboxClient allows the given hosts (names or IP literals, no ports).
func NewSandboxClient(allow []string) *SandboxClient {
	c := &SandboxClient{allow: map[string]bool{}}
	for _, h := range allow {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			c.allow[h] = true
		}
	}
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		ip := net.ParseIP(host)
		if ip == nil {
			return fmt.Errorf("sandbox: not an IP address: %q", host)
		}
		internal := ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast()
		if internal && !c.allow[ip.String()] {
			return fmt.Errorf("%w %s", errInternalAddress, ip)
		}
		return nil
	}}
	c.client = &http.Client{
		Transport: &http.Transport{DialContext: d.DialContext, Proxy: nil, MaxIdleConnsPerHost: 4},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return c
}

// allowed reports whether u may be called.
func (c *SandboxClient) allowed(u *url.URL) bool {
	return (u.Scheme == "http" || u.Scheme == "https") && u.User == nil && c.allow[strings.ToLower(u.Hostname())]
}

func (c *SandboxClient) forward(ctx context.Context, tokens *Tokens, run *store.Run, raw, method string, params json.RawMessage, id any) (*Response, error) {
	u, err := url.Parse(raw)
	if err != nil || !c.allowed(u) {
		return nil, ErrBadSandbox
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/command"
	u.RawQuery, u.Fragment = "", ""
	tok, _, err := tokens.Mint(Claims{RunID: run.ID, TaskID: run.TaskID, TeamID: run.ProjectID, DistinctID: "runhub", Scope: "write"}, AudienceClient)
	if err != nil {
		return nil, err
	}
	if len(params) == 0 {
		params = json.RawMessage("{}")
	}
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, ErrBadSandbox
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.client.Do(req)
	if err != nil {
		if errors.Is(err, errInternalAddress) {
			return nil, ErrBadSandbox
		}
		if ctx.Err() != nil {
			return nil, ErrAgentTimeout
		}
		return nil, fmt.Errorf("%w: %w", ErrAgentGone, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return nil, ErrAgentTimeout
		}
		return nil, fmt.Errorf("%w: %w", ErrAgentGone, err)
	}
	var out Response
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil || (out.Result == nil && out.Error == nil) {
		return nil, fmt.Errorf("%w: sandbox answered %d", ErrAgentGone, resp.StatusCode)
	}
	out.JSONRPC, out.ID = "2.0", id
	return &out, nil
}
