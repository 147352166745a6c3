package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

// system is origin + edge running as real processes in front of an upstream.
type system struct {
	origin, edge           *proc
	edgeNATS               string // the NATS URL the edge uses
	originURL, edgeURL     string
	edgeOpsURL, natsPrefix string
}

// services says which NATS and Redis the system under test uses.
type services struct {
	external  bool     // NATS_URL and REDIS_URL from the environment (CI), else embedded defaults
	originEnv []string // more settings of the origin ("SEGEDGE_WEBHOOK_SECRET=...")
}

func (s services) String() string {
	if s.external {
		return "external NATS and Redis"
	}
	return "embedded defaults"
}

func startSystem(t *testing.T, svc services, upstream string, edgeEnv ...string) *system {
	t.Helper()
	sys := &system{natsPrefix: testenv.Prefix(t)}
	originAddr, natsAddr := freeAddr(t), freeAddr(t)
	env := []string{
		"ORIGIN_ADDR=" + originAddr,
		"SEGEDGE_DATA_DIR=" + t.TempDir(),
		"SEGEDGE_NATS_PREFIX=" + sys.natsPrefix,
		"SEGEDGE_ADMIN_TOKEN=admin-secret",
		"SEGEDGE_WRITE_KEY=write-secret",
		"SEGEDGE_READ_KEY=read-secret",
	}
	natsURL := "nats://" + natsAddr
	if svc.external {
		n, r := os.Getenv("NATS_URL"), os.Getenv("REDIS_URL")
		if n == "" || r == "" {
			if testenv.RequireServices() {
				t.Fatal("NATS_URL and REDIS_URL are required (SEGEDGE_REQUIRE_SERVICES=1)")
			}
			t.Skip("NATS_URL and REDIS_URL not set")
		}
		natsURL = n
		env = append(env, "NATS_URL="+n, "REDIS_URL="+r, "SEGEDGE_REDIS_PREFIX="+sys.natsPrefix)
		testenv.RemoveOnCleanup(t, n, r, sys.natsPrefix) // the shared servers keep nothing of this test
	} else {
		env = append(env, "SEGEDGE_NATS_EMBED_ADDR="+natsAddr)
	}
	env = append(env, svc.originEnv...)
	sys.origin = start(t, "origin", env...)
	sys.originURL = "http://" + originAddr
	waitStatus(t, sys.origin, sys.originURL+"/readyz", 200, 20*time.Second)

	sys.edgeNATS = natsURL
	sys.edge, sys.edgeURL, sys.edgeOpsURL = startEdge(t, sys, upstream, edgeEnv...)
	return sys
}

// startEdge runs an edge of sys (its origin, NATS, prefix and cookie key, so a visitor's cookie
// names the same user at every edge) with env added, and returns it with its public and ops
// URLs once it is ready: connected, ruleset read, DELTAS replayed.
func startEdge(t *testing.T, sys *system, upstream string, env ...string) (p *proc, edgeURL, opsURL string) {
	t.Helper()
	addr, ops := freeAddr(t), freeAddr(t)
	p = start(t, "edge", append([]string{
		"EDGE_ADDR=" + addr, "EDGE_OPS_ADDR=" + ops, "UPSTREAM_URL=" + upstream,
		"ORIGIN_URL=" + sys.originURL, "NATS_URL=" + sys.edgeNATS, "SEGEDGE_NATS_PREFIX=" + sys.natsPrefix,
		"SEGEDGE_ORIGIN_TOKEN=read-secret",
		"SEGEDGE_COOKIE_KEY=test-cookie-key-0123456789abcdef0123456789"}, env...)...)
	edgeURL, opsURL = "http://"+addr, "http://"+ops
	waitStatus(t, p, opsURL+"/readyz", 200, 20*time.Second)
	return p, edgeURL, opsURL
}

// testUpstream is a site with a few kinds of response a proxy must pass on untouched.
func testUpstream(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/page", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Add("Set-Cookie", "a=1; Path=/")
		w.Header().Add("Set-Cookie", "b=2; Path=/")
		w.Header().Set("X-Custom", "kept")
		w.WriteHeader(201)
		fmt.Fprint(w, "<!doctype html><p>hello \x00\xff bytes</p><div data-seg-slot=\"hero\">default</div>")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintf(w, "%s %s xff=%s", r.Method, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestEdgeProxiesAndShutsDownCleanly(t *testing.T) {
	for _, svc := range []services{{external: false}, {external: true}} {
		t.Run(svc.String(), func(t *testing.T) {
			up := testUpstream(t)
			sys := startSystem(t, svc, up.URL)

			res, err := http.Get(sys.edgeURL + "/page")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 201 {
				t.Errorf("status = %d, want 201", res.StatusCode)
			}
			if want := "<!doctype html><p>hello \x00\xff bytes</p><div data-seg-slot=\"hero\">default</div>"; string(body) != want {
				t.Errorf("body = %q, want %q", body, want)
			}
			if got := res.Header.Values("Set-Cookie"); len(got) < 2 || got[0] != "a=1; Path=/" || got[1] != "b=2; Path=/" {
				t.Errorf("Set-Cookie = %q, want both upstream cookies in order", got)
			}
			if res.Header.Get("X-Custom") != "kept" {
				t.Errorf("X-Custom = %q", res.Header.Get("X-Custom"))
			}

			code, echo := status(sys.edgeURL + "/echo?q=%2Fa+b&x=1")
			if code != 200 || !strings.HasPrefix(echo, "GET /echo?q=%2Fa+b&x=1 xff=127.0.0.1") {
				t.Errorf("echo = %d %q", code, echo)
			}

			// Operations endpoints live on the ops listener only.
			if code, _ := status(sys.edgeOpsURL + "/metrics"); code != 200 {
				t.Errorf("ops /metrics = %d", code)
			}
			if code, body := status(sys.edgeURL + "/metrics"); strings.Contains(body, "go_goroutines") {
				t.Errorf("public /metrics exposes internals (%d)", code)
			}

			for _, p := range []*proc{sys.edge, sys.origin} {
				code, took := p.stop(5 * time.Second)
				if code != 0 {
					t.Errorf("%s exited %d after SIGTERM; output:\n%s", p.name, code, p.Output())
				}
				t.Logf("%s stopped in %s", p.name, took)
			}
		})
	}
}

func TestEdgeIsReadyOnlyOnceNATSIsConnected(t *testing.T) {
	up := testUpstream(t)
	natsAddr := freeAddr(t)
	edgeAddr, opsAddr := freeAddr(t), freeAddr(t)
	edge := start(t, "edge", "EDGE_ADDR="+edgeAddr, "EDGE_OPS_ADDR="+opsAddr, "UPSTREAM_URL="+up.URL,
		"NATS_URL=nats://"+natsAddr, "SEGEDGE_NATS_CONNECT_TIMEOUT=60s")
	waitStatus(t, edge, "http://"+opsAddr+"/healthz", 200, 10*time.Second)
	if code, body := status("http://" + opsAddr + "/readyz"); code != 503 || !strings.Contains(body, "nats") {
		t.Fatalf("readyz before NATS = %d %q, want 503 naming nats", code, body)
	}
	// The site is served meanwhile (default content).
	if code, _ := status("http://" + edgeAddr + "/echo"); code != 200 {
		t.Fatalf("proxy before NATS = %d", code)
	}
	origin := start(t, "origin", "ORIGIN_ADDR="+freeAddr(t), "SEGEDGE_DATA_DIR="+t.TempDir(),
		"SEGEDGE_NATS_EMBED_ADDR="+natsAddr)
	waitStatus(t, edge, "http://"+opsAddr+"/readyz", 200, 20*time.Second)
	if code, _ := edge.stop(5 * time.Second); code != 0 {
		t.Errorf("edge exit code %d", code)
	}
	if code, _ := origin.stop(5 * time.Second); code != 0 {
		t.Errorf("origin exit code %d", code)
	}
}

func TestBadConfigurationExitsWithOneClearLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() }) // not defer: the parallel subtests run after this function returns
	closed := freeAddr(t)              // nothing listens here
	up := testUpstream(t)
	tests := []struct {
		name    string
		program string
		env     []string
		want    string
	}{
		{"unparseable NATS URL", "origin", []string{"NATS_URL=nats//nowhere"}, "NATS_URL"},
		{"unparseable Redis URL", "origin", []string{"REDIS_URL=redis//x", "SEGEDGE_NATS_EMBED_ADDR=" + freeAddr(t)}, "REDIS_URL"},
		{"origin port in use", "origin", []string{"ORIGIN_ADDR=" + busy.Addr().String()}, "address already in use"},
		{"embedded NATS port in use", "origin", []string{"ORIGIN_ADDR=" + freeAddr(t), "SEGEDGE_NATS_EMBED_ADDR=" + busy.Addr().String()}, "address already in use"},
		{"unreachable NATS", "origin", []string{"ORIGIN_ADDR=" + freeAddr(t), "NATS_URL=nats://" + closed, "SEGEDGE_NATS_CONNECT_TIMEOUT=1s"}, "connect to NATS"},
		{"unreachable Redis", "origin", []string{"ORIGIN_ADDR=" + freeAddr(t), "SEGEDGE_NATS_EMBED_ADDR=" + freeAddr(t), "REDIS_URL=redis://" + closed}, "connect to Redis"},
		{"bad duration", "origin", []string{"SEGEDGE_SHUTDOWN_TIMEOUT=soon"}, "SEGEDGE_SHUTDOWN_TIMEOUT"},
		{"edge without upstream", "edge", nil, "UPSTREAM_URL is required"},
		{"edge port in use", "edge", []string{"UPSTREAM_URL=" + up.URL, "EDGE_ADDR=" + busy.Addr().String(), "EDGE_OPS_ADDR=" + freeAddr(t)}, "address already in use"},
		{"edge unreachable NATS", "edge", []string{"UPSTREAM_URL=" + up.URL, "EDGE_ADDR=" + freeAddr(t), "EDGE_OPS_ADDR=" + freeAddr(t), "NATS_URL=nats://" + closed, "SEGEDGE_NATS_CONNECT_TIMEOUT=1s"}, "connect to NATS"},
		{"short cookie key", "edge", []string{"UPSTREAM_URL=" + up.URL, "SEGEDGE_COOKIE_KEY=short"}, "SEGEDGE_COOKIE_KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := append([]string{"SEGEDGE_DATA_DIR=" + t.TempDir()}, tt.env...)
			p := start(t, tt.program, env...)
			code := p.wait(20 * time.Second)
			out := p.Output()
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; output:\n%s", out)
			}
			last := lastLine(out)
			if !strings.HasPrefix(last, tt.program+": ") || !strings.Contains(last, tt.want) {
				t.Fatalf("last line %q, want %q naming %q; output:\n%s", last, tt.program+": …", tt.want, out)
			}
			if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
				t.Fatalf("output has a stack trace:\n%s", out)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
