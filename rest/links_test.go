package rest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"runhub/proxy/tokens"
	"runhub/store/blob"
)

// linkEnv is an env with every link-making feature on (tokens, signed log
// and artifact links), configured by cfg.
func linkEnv(t *testing.T, cfg func(*Config)) *env {
	t.Helper()
	dir := t.TempDir()
	tk, err := tokens.Load(tokens.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := blob.NewFS(dir + "/blobs")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := blob.LoadSigner(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return newEnv(t, func(c *Config) {
		c.Tokens, c.Blobs, c.Files, c.Signer = tk, fs, fs, signer
		if cfg != nil {
			cfg(c)
		}
	})
}

// links collects every kind of link the API hands out (log_url, pagination
// next, ws_url, an artifact URL), asking with host as the Host header and
// the extra headers.
func links(t *testing.T, e *env, host string, hdr map[string]string) map[string]string {
	t.Helper()
	f := e.fixture()
	e.createRun(e.p1, e.writeKey, f.task, nil)
	call := func(method, path string, body any, out any) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		hr, err := http.NewRequest(method, e.srv.URL+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		hr.Host = host
		hr.Header.Set("Authorization", "Bearer "+e.writeKey)
		hr.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			hr.Header.Set(k, v)
		}
		res, err := e.client.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
		}
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
	var run struct {
		LogURL string `json:"log_url"`
	}
	call("GET", f.path(e, "/"), nil, &run)
	var page struct {
		Next string `json:"next"`
	}
	call("GET", e.runsPath(e.p1, f.task)+"/?limit=1", nil, &page)
	var tok struct {
		WSURL string `json:"ws_url"`
	}
	call("GET", f.path(e, "/connection_token/"), nil, &tok)
	var st streamTokenBody
	call("GET", f.path(e, "/stream_token/"), nil, &st)
	var manifest struct{ Artifacts []map[string]any }
	call("POST", f.path(e, "/artifacts/"), map[string]any{"artifacts": []map[string]any{
		{"name": "a.txt", "type": "artifact", "content": "a"}}}, &manifest)
	var presigned struct {
		URL string `json:"url"`
	}
	call("POST", f.path(e, "/artifacts/presign/"), map[string]any{"storage_path": manifest.Artifacts[0]["storage_path"]}, &presigned)
	return map[string]string{"log_url": run.LogURL, "next": page.Next, "ws_url": tok.WSURL, "artifact": presigned.URL,
		"stream_base_url": st.StreamBaseURL + f.path(e, "/stream/")}
}

// wantLinkBase checks that every link starts with base (ws_url with the
// WebSocket scheme).
func wantLinkBase(t *testing.T, got map[string]string, base string) {
	t.Helper()
	for name, u := range got {
		want := base + "/"
		if name == "ws_url" {
			want = "ws" + strings.TrimPrefix(base, "http") + "/"
		}
		if !strings.HasPrefix(u, want) {
			t.Errorf("%s = %q, want it to start with %q", name, u, want)
		}
	}
}

var forged = map[string]string{"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}

// TestLinksFromPublicURL: with a public URL, a forged Host and
// X-Forwarded-* change no link.
func TestLinksFromPublicURL(t *testing.T) {
	e := linkEnv(t, func(c *Config) {
		c.PublicURL = "https://runhub.example.com/hub/"
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	wantLinkBase(t, links(t, e, "attacker.example", map[string]string{"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}),
		"https://runhub.example.com/hub")
}

// TestLinksIgnoreForwardedFromUntrustedPeer: without trusted proxies,
// X-Forwarded-Proto and X-Forwarded-Host are ignored and links use the
// request's Host. Before: X-Forwarded-Proto was believed from anyone.
func TestLinksIgnoreForwardedFromUntrustedPeer(t *testing.T) {
	e := linkEnv(t, func(c *Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} // not the test client
	})
	host := strings.TrimPrefix(e.srv.URL, "http://")
	wantLinkBase(t, links(t, e, host, forged), "http://"+host)
}

// TestLinksHonourForwardedFromTrustedProxy: from a peer in a trusted CIDR
// the forwarded scheme and host make the links.
func TestLinksHonourForwardedFromTrustedProxy(t *testing.T) {
	e := linkEnv(t, func(c *Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	wantLinkBase(t, links(t, e, "internal:8080", map[string]string{"X-Forwarded-Host": "runhub.example.com:8443, inner.example", "X-Forwarded-Proto": "https"}),
		"https://runhub.example.com:8443")
	// A value that is not a host is ignored.
	wantLinkBase(t, links(t, e, "internal:8080", map[string]string{"X-Forwarded-Host": "evil.example/path?x", "X-Forwarded-Proto": "gopher"}),
		"http://internal:8080")
}

func TestParsePublicURLAndTrustedProxies(t *testing.T) {
	for in, want := range map[string]string{
		"https://runhub.example.com/":     "https://runhub.example.com",
		"http://10.0.0.1:8080/prefix":     "http://10.0.0.1:8080/prefix",
		"ftp://runhub.example.com":        "",
		"runhub.example.com":              "",
		"https://user@runhub.example.com": "",
		"https://runhub.example.com/?a=b": "",
		"https://":                        "",
	} {
		got, err := ParsePublicURL(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("ParsePublicURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	ps, err := ParseTrustedProxies("10.0.0.0/8, 192.168.1.7 ,::1")
	if err != nil || len(ps) != 3 || ps[1].String() != "192.168.1.7/32" || ps[2].String() != "::1/128" {
		t.Errorf("ParseTrustedProxies: %v %v", ps, err)
	}
	if _, err := ParseTrustedProxies("10.0.0.0/8,example.com"); err == nil {
		t.Error("a host name was accepted as a trusted proxy")
	}
}

// FuzzLinkBase: whatever Host and X-Forwarded-* a trusted proxy passes on,
// the base of every link is scheme://host and nothing more: no path, user
// info, query or second host can be smuggled into a link the server signs
// and hands out.
func FuzzLinkBase(f *testing.F) {
	for _, s := range [][3]string{
		{"api.example.com", "https", "runhub.example.com"},
		{"api.example.com:8080", "HTTP", "evil.example/x?y#z"},
		{"h", "https, http", "a.example, b.example"},
		{"h", "javascript", "user@evil.example"},
		{"[::1]:80", "", "[::1"},
		{"h", "https", "exa mple.com"},
		{"h", "https", "ok.example:99999"},
		{"h", "", "\xff.example"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	srv := &Server{proxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	f.Fuzz(func(t *testing.T, host, proto, fwdHost string) {
		r := httptest.NewRequest("GET", "http://placeholder/", nil)
		r.Host, r.RemoteAddr = host, "127.0.0.1:4000"
		r.Header.Set("X-Forwarded-Proto", proto)
		r.Header.Set("X-Forwarded-Host", fwdHost)
		base := srv.linkBase(r)
		if fh := firstForwarded(fwdHost); validHost(fh) {
			u, err := url.Parse(base)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host != fh || u.Path != "" ||
				u.User != nil || u.RawQuery != "" || u.Fragment != "" || base != u.Scheme+"://"+u.Host {
				t.Fatalf("forwarded host %q, proto %q: base %q", fwdHost, proto, base)
			}
			if !utf8.ValidString(base) {
				t.Fatalf("base %q is not UTF-8", base)
			}
			return
		}
		if !strings.HasSuffix(base, "://"+host) {
			t.Fatalf("forwarded host %q refused, yet base %q is not the request's host %q", fwdHost, base, host)
		}
	})
}
