package trigger

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func TestValidateWebhook(t *testing.T) {
	tests := []struct {
		url     string
		allow   []string
		refused bool
	}{
		{url: "https://hooks.example.com/loyalty"},
		{url: "http://93.184.216.34:8080/x"},
		{url: "https://[2001:db8::1]/x"},
		{url: "ftp://hooks.example.com/x", refused: true},
		{url: "file:///etc/passwd", refused: true},
		{url: "hooks.example.com/x", refused: true},
		{url: "https:///x", refused: true},
		{url: "http://127.0.0.1:9000/x", refused: true},
		{url: "http://127.0.0.1:9000/x", allow: []string{"127.0.0.1"}},
		{url: "http://localhost/x", refused: true},
		{url: "http://api.localhost/x", refused: true},
		{url: "http://LOCALHOST./x", refused: true},
		{url: "http://localhost/x", allow: []string{"localhost"}},
		{url: "http://169.254.169.254/latest/meta-data/", refused: true},
		{url: "http://10.1.2.3/x", refused: true},
		{url: "http://172.16.0.1/x", refused: true},
		{url: "http://172.32.0.1/x"},
		{url: "http://192.168.1.1/x", refused: true},
		{url: "http://0.0.0.0/x", refused: true},
		{url: "http://224.0.0.1/x", refused: true},
		{url: "http://[::1]/x", refused: true},
		{url: "http://[::1]/x", allow: []string{"[::1]"}},
		{url: "http://[::ffff:169.254.169.254]/x", refused: true},
		{url: "http://[fd00::1]/x", refused: true},
		{url: "http://[fe80::1]/x", refused: true},
		{url: "http://[::]/x", refused: true},
		{url: "http://%zz/x", refused: true},
	}
	for _, tc := range tests {
		err := ValidateWebhook(tc.url, tc.allow)
		if tc.refused != (err != nil) {
			t.Errorf("ValidateWebhook(%q, %v) = %v, want refused=%v", tc.url, tc.allow, err, tc.refused)
		}
		if err != nil && !errors.Is(err, ErrRefusedTarget) {
			t.Errorf("ValidateWebhook(%q) = %v, want it to wrap ErrRefusedTarget", tc.url, err)
		}
	}
}

func TestAllowed(t *testing.T) {
	allow := []string{"127.0.0.1", "Hooks.Example.com", "*.corp.example", "[::1]", ""}
	tests := []struct {
		host string
		want bool
	}{
		{"127.0.0.1", true},
		{"hooks.example.com", true},
		{"hooks.example.com.", true},
		{"evil-hooks.example.com", false},
		{"a.corp.example", true},
		{"a.b.corp.example", true},
		{"corp.example", false},
		{"xcorp.example", false},
		{"::1", true},
		{"[::1]", true},
		{"127.0.0.2", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := Allowed(tc.host, allow); got != tc.want {
			t.Errorf("Allowed(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

// fakeDNS answers every A query with ip and every other query with no records, so a test can
// make any host name resolve where it wants through the real Go resolver.
func fakeDNS(t *testing.T, ip netip.Addr) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionAvailable: true})
			b.EnableCompression()
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			if q.Type == dnsmessage.TypeA {
				_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: ip.As4()})
			}
			out, err := b.Finish()
			if err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
}

// A name that passes validation (it is not an IP or localhost) but resolves to the cloud
// metadata address is refused when the connection is made: DNS rebinding does not get through.
func TestDialerRefusesResolvedMetadataAddress(t *testing.T) {
	r := fakeDNS(t, netip.MustParseAddr("169.254.169.254"))
	const host = "metadata.rebind.example"
	if err := ValidateWebhook("http://"+host+"/latest/meta-data/", nil); err != nil {
		t.Fatalf("the name itself should pass validation: %v", err)
	}
	addrs, err := r.LookupHost(context.Background(), host)
	if err != nil || len(addrs) != 1 || addrs[0] != "169.254.169.254" {
		t.Fatalf("fake DNS: %v %v", addrs, err)
	}
	dial := guardedDialer(nil, time.Second, r)
	conn, err := dial(context.Background(), "tcp", host+":80")
	if err == nil {
		conn.Close()
		t.Fatal("dial to a name resolving to 169.254.169.254 succeeded")
	}
	if !errors.Is(err, ErrRefusedTarget) || !strings.Contains(err.Error(), "169.254.169.254") {
		t.Fatalf("dial error = %v, want ErrRefusedTarget naming 169.254.169.254", err)
	}
}

// A name resolving to loopback is refused unless the name is allowlisted; then the real
// connection is made.
func TestDialerAllowlistByName(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	r := fakeDNS(t, netip.MustParseAddr("127.0.0.1"))
	const host = "hooks.internal.example"

	if conn, err := guardedDialer(nil, time.Second, r)(context.Background(), "tcp", host+":"+port); err == nil {
		conn.Close()
		t.Fatal("dial to a name resolving to 127.0.0.1 succeeded without an allowlist")
	} else if !errors.Is(err, ErrRefusedTarget) {
		t.Fatalf("dial error = %v, want ErrRefusedTarget", err)
	}
	conn, err := guardedDialer([]string{"*.internal.example"}, time.Second, r)(context.Background(), "tcp", host+":"+port)
	if err != nil {
		t.Fatalf("allowlisted dial: %v", err)
	}
	conn.Close()
}

func TestCheckAddr(t *testing.T) {
	for _, a := range []string{"127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254", "0.0.0.0", "239.1.1.1", "255.255.255.255", "::1", "::", "fd12::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1"} {
		if err := CheckAddr(netip.MustParseAddr(a)); !errors.Is(err, ErrRefusedTarget) {
			t.Errorf("CheckAddr(%s) = %v, want refused", a, err)
		}
	}
	for _, a := range []string{"8.8.8.8", "172.32.0.1", "2001:4860:4860::8888"} {
		if err := CheckAddr(netip.MustParseAddr(a)); err != nil {
			t.Errorf("CheckAddr(%s) = %v, want allowed", a, err)
		}
	}
	if err := CheckAddr(netip.Addr{}); err == nil {
		t.Error("CheckAddr(invalid) allowed")
	}
}
