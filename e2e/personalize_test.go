package e2e

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// siteUpstream serves a cacheable page with a hero slot, as a site behind a CDN would.
func siteUpstream(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=600")
		w.Write([]byte(`<!doctype html><title>shop</title><div data-seg-slot="hero">Welcome</div><!-- <div data-seg-slot="hero"> --><p>end</p>`))
	})
	mux.HandleFunc("/fragments/vip-hero.html", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`VIP hero`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func putRules(t *testing.T, sys *system, path string) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	putRulesText(t, sys, string(src))
}

func TestAnEventChangesWhatThatVisitorSeesAndOnlyThem(t *testing.T) {
	sys := startSystem(t, services{}, siteUpstream(t).URL)
	putRules(t, sys, "../scripts/demo/rules.yaml")

	// Two visitors get cookies; the ruleset reaches the edge.
	resA, _ := get(t, sys.edgeURL+"/", "")
	resB, _ := get(t, sys.edgeURL+"/", "")
	a, b := cookieOf(resA), cookieOf(resB)
	for _, res := range []*http.Response{resA, resB} {
		n := 0
		for _, v := range res.Header.Values("Set-Cookie") {
			if strings.HasPrefix(v, "segedge_uid=") {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d segedge_uid cookies set on one response, want 1", n)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, body := get(t, sys.edgeURL+"/", a)
		if res.Header.Get("Segedge-Ruleset") == "1" {
			if !strings.Contains(body, `<div data-seg-slot="hero">Welcome</div>`) {
				t.Fatalf("before any event the default hero is served: %q", body)
			}
			if cc := res.Header.Get("Cache-Control"); !strings.Contains(cc, "private") {
				t.Fatalf("personalized response Cache-Control %q, want private", cc)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ruleset 1 never reached the edge")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Visitor A adds to cart through the beacon.
	req, _ := http.NewRequest("POST", sys.edgeURL+"/v1/events", strings.NewReader(`[{"event_id":"c1","type":"add_to_cart"}]`))
	req.Header.Set("Cookie", "segedge_uid="+a)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 202 {
		t.Fatalf("beacon: %d", res.StatusCode)
	}
	t0 := time.Now()
	for {
		_, body := get(t, sys.edgeURL+"/", a)
		if strings.Contains(body, `<div data-seg-slot="hero"><h1>Your cart is waiting</h1>`) {
			if !strings.Contains(body, `<!-- <div data-seg-slot="hero"> --><p>end</p>`) {
				t.Fatalf("the rest of the page changed: %q", body)
			}
			t.Logf("event to personalized page: %s", time.Since(t0))
			break
		}
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("visitor A still sees %q", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, body := get(t, sys.edgeURL+"/", b); !strings.Contains(body, `<div data-seg-slot="hero">Welcome</div>`) {
		t.Fatalf("visitor B sees A's personalization: %q", body)
	}
	// One slot at a time, for the browser client.
	if res, body := get(t, sys.edgeURL+"/user/slots/hero", a); res.StatusCode != 200 || !strings.HasPrefix(body, "<h1>Your cart is waiting") {
		t.Fatalf("slot for A: %d %q", res.StatusCode, body)
	}
	if res, _ := get(t, sys.edgeURL+"/user/slots/hero", b); res.StatusCode != 204 {
		t.Fatalf("slot for B: %d, want 204 (keep the default)", res.StatusCode)
	}
	if res, _ := get(t, sys.edgeURL+"/user/slots/nope", b); res.StatusCode != 404 {
		t.Fatalf("unknown slot: %d", res.StatusCode)
	}
	if res, body := get(t, sys.edgeURL+"/segedge.js", ""); res.StatusCode != 200 || !strings.Contains(body, "segedge:change") {
		t.Fatalf("/segedge.js: %d", res.StatusCode)
	}
}
