package proxy

import (
	"net/url"
	"testing"
)

// TestSandboxAllowListPorts: a "host:port" entry allows that port only; a
// bare host allows 80 and 443 (explicit or the scheme's default) and no
// other port; IP literals match in any spelling.
func TestSandboxAllowListPorts(t *testing.T) {
	c, err := NewSandboxClient([]string{"sb.example.com", "pinned.example.com:8443", "10.0.0.5:9000", "[::1]:7000", "2001:db8::1", " ", "UPPER.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for raw, want := range map[string]bool{
		"http://sb.example.com/":          true,
		"https://sb.example.com/":         true,
		"http://sb.example.com:80/":       true,
		"http://sb.example.com:443/":      true,
		"https://SB.example.com:443/x":    true,
		"http://sb.example.com:8080/":     false,
		"http://sb.example.com:22/":       false,
		"https://pinned.example.com:8443": true,
		"https://pinned.example.com/":     false,
		"http://pinned.example.com/":      false,
		"http://pinned.example.com:8444/": false,
		"http://10.0.0.5:9000/":           true,
		"http://10.0.0.5/":                false,
		"http://10.0.0.5:9001/":           false,
		"http://[::1]:7000/":              true,
		"http://[0:0::1]:7000/":           true,
		"http://[::1]/":                   false,
		"http://[2001:db8::1]/":           true,
		"http://[2001:db8:0::1]:443/":     true,
		"http://[2001:db8::1]:8080/":      false,
		"http://upper.example.com/":       true,
		"ftp://sb.example.com:80/":        false,
		"http://user@sb.example.com/":     false,
		"http://other.example.com/":       false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.allowed(u); got != want {
			t.Errorf("allowed(%s) = %v, want %v", raw, got, want)
		}
	}
	// The dial guard pins the port too: an allow-listed internal address
	// is reachable on its listed port only.
	for _, tc := range []struct {
		host, port string
		want       bool
	}{{"10.0.0.5", "9000", true}, {"10.0.0.5", "80", false}, {"::1", "7000", true}, {"::1", "22", false}} {
		if got := c.permits(tc.host, tc.port); got != tc.want {
			t.Errorf("permits(%s, %s) = %v, want %v", tc.host, tc.port, got, tc.want)
		}
	}
	for _, bad := range []string{"host:0", "host:70000", "host:http", "a:b:c", "http://host", "user@host", "[::1", ":80"} {
		if _, err := NewSandboxClient([]string{bad}); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}
