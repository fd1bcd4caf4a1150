package rest

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// baseURL is the base every link of a response is built from: log_url,
// ws_url, artifact URLs, pagination. ServeHTTP resolves it once per request
// (linkBase); a request that did not pass through ServeHTTP gets its Host.
func baseURL(r *http.Request) string {
	if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		return info.base
	}
	return "http://" + r.Host
}

// linkBase decides the base of links for r: the configured public URL; else
// the request's Host and transport, overridden by X-Forwarded-Proto and
// X-Forwarded-Host only when the peer is a trusted proxy (anyone else could
// forge them to make the server hand out links to their own host).
func (s *Server) linkBase(r *http.Request) string {
	if s.publicURL != "" {
		return s.publicURL
	}
	scheme, host := "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if s.fromTrustedProxy(r) {
		if p := strings.ToLower(firstForwarded(r.Header.Get("X-Forwarded-Proto"))); p == "http" || p == "https" {
			scheme = p
		}
		if h := firstForwarded(r.Header.Get("X-Forwarded-Host")); validHost(h) {
			host = h
		}
	}
	return scheme + "://" + host
}

// fromTrustedProxy reports whether the peer of r is in TrustedProxies.
func (s *Server) fromTrustedProxy(r *http.Request) bool {
	if len(s.proxies) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range s.proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// firstForwarded is the first value of a comma-separated X-Forwarded-*
// header: the one the outermost proxy saw from the client.
func firstForwarded(v string) string {
	v, _, _ = strings.Cut(v, ",")
	return strings.TrimSpace(v)
}

// validHost accepts a host[:port] and nothing that could change the shape
// of a URL (no path, userinfo, query or spaces).
func validHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune(".-_:[]", c):
		default:
			return false
		}
	}
	u, err := url.Parse("http://" + h)
	return err == nil && u.Host == h
}

// ParsePublicURL checks a --public-url value: an absolute http or https
// URL with a host, optionally a path prefix, without query, fragment or
// user info. It returns it without a trailing slash.
func ParsePublicURL(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" || !validHost(u.Host) {
		return "", fmt.Errorf("public URL %q: want http(s)://host[:port][/prefix]", v)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// ParseTrustedProxies parses a comma-separated list of CIDRs (a bare IP is
// one address) for --trusted-proxies.
func ParseTrustedProxies(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(part)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: not a CIDR or IP address", part)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}
