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
	"strconv"
	"strings"
	"syscall"
	"time"

	"runhub/proxy/tokens"
	"runhub/store"
)

// SandboxClient forwards commands to HTTP sandboxes: POST
// {sandbox_url}/command with a fresh connection token. It is an SSRF
// guard as much as a client: only http(s) URLs whose host is on the
// allow-list are called, redirects are never followed, and a connection to
// a loopback, private or link-local address is refused unless that address
// itself is on the allow-list (so an allow-listed name that resolves to an
// internal address is still refused). Entries pin the port: "host:port"
// allows that port only, and a bare "host" allows the standard ports 80
// and 443 only, so that listing a machine does not open every service on
// it.
type SandboxClient struct {
	allow  map[string]map[string]bool // host (lower case, IPs canonical) → allowed ports
	client *http.Client
}

// defaultSandboxPorts are what a bare host on the allow-list permits: the
// standard HTTP and HTTPS ports, where a sandbox's agent server is
// published; any other port must be listed explicitly as "host:port".
var defaultSandboxPorts = []string{"80", "443"}

// errInternalAddress: an allowed name resolved to an internal address.
var errInternalAddress = errors.New("sandbox: refusing internal address")

// NewSandboxClient allows the given entries: "host" (a name or IP literal;
// ports 80 and 443) or "host:port" ("[v6]:port" for IPv6). Blank entries are
// skipped; a malformed one is an error, so a typo in the configuration
// fails the start instead of silently allowing nothing or too much.
func NewSandboxClient(allow []string) (*SandboxClient, error) {
	c := &SandboxClient{allow: map[string]map[string]bool{}}
	for _, entry := range allow {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		host, ports, err := parseSandboxHost(entry)
		if err != nil {
			return nil, err
		}
		if c.allow[host] == nil {
			c.allow[host] = map[string]bool{}
		}
		for _, p := range ports {
			c.allow[host][p] = true
		}
	}
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		ip := net.ParseIP(host)
		if ip == nil {
			return fmt.Errorf("sandbox: not an IP address: %q", host)
		}
		internal := ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast()
		if internal && !c.permits(ip.String(), port) {
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
	return c, nil
}

// parseSandboxHost reads one allow-list entry into its canonical host and
// the ports it allows.
func parseSandboxHost(entry string) (string, []string, error) {
	host, port, err := net.SplitHostPort(entry)
	ports := []string{port}
	if err != nil {
		// No port: a name, an IPv4 literal, or an IPv6 literal with or
		// without brackets.
		host, ports = entry, defaultSandboxPorts
		bracketed := strings.HasPrefix(entry, "[") && strings.HasSuffix(entry, "]")
		if bracketed {
			host = entry[1 : len(entry)-1]
		}
		if (bracketed || strings.Contains(host, ":")) && net.ParseIP(host) == nil {
			return "", nil, fmt.Errorf("sandbox host %q: not host or host:port", entry)
		}
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", nil, fmt.Errorf("sandbox host %q: bad port", entry)
	}
	if host == "" || strings.ContainsAny(host, "/@[] ") {
		return "", nil, fmt.Errorf("sandbox host %q: not host or host:port", entry)
	}
	return canonicalHost(host), ports, nil
}

// canonicalHost lower-cases a name and writes an IP literal in its
// canonical form, so that "::1" and "0:0::1" are one entry.
func canonicalHost(h string) string {
	if ip := net.ParseIP(h); ip != nil {
		return ip.String()
	}
	return strings.ToLower(h)
}

// permits reports whether host (canonical) may be called on port.
func (c *SandboxClient) permits(host, port string) bool {
	return c.allow[host][port]
}

// allowed reports whether u may be called: http(s), no user info, and its
// host and effective port (the scheme's default when the URL has none) on
// the allow-list.
func (c *SandboxClient) allowed(u *url.URL) bool {
	if (u.Scheme != "http" && u.Scheme != "https") || u.User != nil {
		return false
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return c.permits(canonicalHost(u.Hostname()), port)
}

func (c *SandboxClient) forward(ctx context.Context, tk *tokens.Tokens, run *store.Run, raw, method string, params json.RawMessage, id any) (*Response, error) {
	u, err := url.Parse(raw)
	if err != nil || !c.allowed(u) {
		return nil, ErrBadSandbox
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/command"
	u.RawQuery, u.Fragment = "", ""
	tok, _, err := tk.Mint(tokens.Claims{RunID: run.ID, TaskID: run.TaskID, TeamID: run.ProjectID, DistinctID: "runhub", Scope: "write"}, tokens.AudienceClient)
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
