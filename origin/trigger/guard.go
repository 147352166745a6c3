package trigger

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrRefusedTarget is wrapped by every error that refuses a webhook target (bad scheme, a
// forbidden address). The Dispatcher dead-letters such firings at once instead of retrying.
var ErrRefusedTarget = errors.New("webhook target refused")

// forbidden are the networks a webhook may not reach unless its host is allowlisted: a rules
// author must not be able to make the origin call its own loopback services, the private network
// it lives in, or the cloud metadata endpoint (169.254.169.254).
var forbidden = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network", includes unspecified
	netip.MustParsePrefix("10.0.0.0/8"),     // private
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT, often internal
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata
	netip.MustParsePrefix("172.16.0.0/12"),  // private
	netip.MustParsePrefix("192.168.0.0/16"), // private
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, includes broadcast
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("fc00::/7"),       // unique local
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("ff00::/8"),       // multicast
}

// CheckAddr returns an error wrapping ErrRefusedTarget if ip is in a network webhooks may not
// reach. IPv4-mapped IPv6 addresses are checked as IPv4.
func CheckAddr(ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrRefusedTarget)
	}
	for _, p := range forbidden {
		if p.Contains(ip) {
			return fmt.Errorf("%w: %s is in %s (loopback, private, link-local, multicast or reserved)", ErrRefusedTarget, ip, p)
		}
	}
	return nil
}

// Allowed reports whether host matches an allowlist entry: an exact host name or IP
// ("hooks.example.com", "127.0.0.1", "::1") or a wildcard for subdomains ("*.example.com", which
// does not match example.com itself). Matching ignores case and IPv6 brackets.
func Allowed(host string, allow []string) bool {
	host = normHost(host)
	if host == "" {
		return false
	}
	for _, a := range allow {
		a = normHost(a)
		if a == "" {
			continue
		}
		if suffix, ok := strings.CutPrefix(a, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
			continue
		}
		if a == host {
			return true
		}
	}
	return false
}

func normHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(h, ".")
}

// ValidateWebhook checks a webhook URL without resolving it, so a rules upload can reject it
// early: only absolute http and https URLs with a host; an IP literal or a localhost name must
// not be in a forbidden network unless the host is in allow. Host names are checked again, by
// their resolved addresses, when the Dispatcher connects.
func ValidateWebhook(raw string, allow []string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: webhook URL: %v", ErrRefusedTarget, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: webhook URL %q: scheme must be http or https", ErrRefusedTarget, u.Redacted())
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%w: webhook URL %q: no host", ErrRefusedTarget, u.Redacted())
	}
	if Allowed(host, allow) {
		return nil
	}
	if ip, err := netip.ParseAddr(normHost(host)); err == nil {
		if err := CheckAddr(ip); err != nil {
			return fmt.Errorf("webhook URL %q: %w", u.Redacted(), err)
		}
		return nil
	}
	h := normHost(host)
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%w: webhook URL %q: localhost is not allowed without an allowlist entry", ErrRefusedTarget, u.Redacted())
	}
	return nil
}

// guardControl is a net.Dialer Control function: it runs after name resolution, on the address
// actually being connected to, so DNS rebinding (a name that resolves to a public address when
// validated and to 169.254.169.254 when used) cannot bypass the check.
func guardControl(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: dial %s %q: %v", ErrRefusedTarget, network, address, err)
	}
	return CheckAddr(ap.Addr())
}

// GuardedDialer returns a DialContext function for an http.Transport that refuses forbidden
// addresses at connect time unless the host being dialled is in allow. The allowlist is
// checked on the host name of the URL (before resolution): allowing "hooks.internal" allows
// whatever it resolves to.
func GuardedDialer(allow []string, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return guardedDialer(allow, timeout, nil)
}

// guardedDialer is GuardedDialer with a resolver of choice (tests resolve names with their own
// DNS server).
func guardedDialer(allow []string, timeout time.Duration, r *net.Resolver) func(ctx context.Context, network, addr string) (net.Conn, error) {
	open := &net.Dialer{Timeout: timeout, Resolver: r}
	guarded := &net.Dialer{Timeout: timeout, Resolver: r, Control: guardControl}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %q: %w", addr, err)
		}
		if Allowed(host, allow) {
			return open.DialContext(ctx, network, addr)
		}
		return guarded.DialContext(ctx, network, addr)
	}
}
