package server

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/event"
)

// trustedUsers reads a logged-in user's id from a request header that a trusted hop in front of
// the edge sets (an auth gateway, the site's own login proxy): with it, a visitor is the same user
// on every device, and the cookie is not needed. The header is believed only on connections from
// the configured networks, so a visitor who reaches the edge directly cannot claim another's id;
// from anywhere else it is ignored and counted. The header never reaches the upstream unless it
// came from a trusted hop.
type trustedUsers struct {
	header   string // "": off
	vary     string // what a personalized response depends on: "Cookie", or "Cookie, <header>"
	networks []netip.Prefix
	ignored  prometheus.Counter
	used     prometheus.Counter
}

// newTrustedUsers parses the settings; header "" turns the feature off (its metrics stay at 0).
func newTrustedUsers(header, networks string, reg prometheus.Registerer) (*trustedUsers, error) {
	t := &trustedUsers{header: header, vary: "Cookie"}
	t.used = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_trusted_user_requests_total",
		Help: "Requests identified by the trusted user-id header (SEGEDGE_USER_HEADER)."})
	t.ignored = prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_untrusted_user_header_total",
		Help: "Requests carrying the user-id header from outside SEGEDGE_TRUSTED_NETWORKS, or with an invalid id; the header was ignored and removed."})
	reg.MustRegister(t.used, t.ignored)
	if header == "" {
		return t, nil
	}
	t.vary = "Cookie, " + header
	for _, s := range strings.Split(networks, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("SEGEDGE_TRUSTED_NETWORKS: %q is neither a CIDR nor an address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		t.networks = append(t.networks, p.Masked())
	}
	if len(t.networks) == 0 {
		return nil, fmt.Errorf("SEGEDGE_USER_HEADER %q needs SEGEDGE_TRUSTED_NETWORKS: the addresses of the hops allowed to set it", header)
	}
	return t, nil
}

// user returns the trusted user id of ctx's request. An id from an untrusted peer, or one that
// is not a valid user id (printable ASCII, at most event.DefaultMaxIDLen bytes), is removed from
// the request and ignored.
func (t *trustedUsers) user(ctx *fasthttp.RequestCtx) ([]byte, bool) {
	if t.header == "" {
		return nil, false
	}
	id := ctx.Request.Header.Peek(t.header)
	if id == nil {
		return nil, false
	}
	if !t.trusts(ctx) || !validUserID(id) {
		t.ignored.Inc()
		ctx.Request.Header.Del(t.header)
		return nil, false
	}
	t.used.Inc()
	return id, true
}

func (t *trustedUsers) trusts(ctx *fasthttp.RequestCtx) bool {
	var a netip.Addr
	switch ra := ctx.RemoteAddr().(type) {
	case interface{ AddrPort() netip.AddrPort }:
		a = ra.AddrPort().Addr().Unmap()
	default:
		return false
	}
	for _, p := range t.networks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func validUserID(id []byte) bool {
	if len(id) == 0 || len(id) > event.DefaultMaxIDLen {
		return false
	}
	for _, c := range id {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}
