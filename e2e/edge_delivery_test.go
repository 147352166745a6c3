package e2e

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
)

// rawClient does not ask for gzip on its own, so the test sees exactly what the edge sends.
var rawClient = &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}

func rawGet(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := rawClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

func decoded(t *testing.T, res *http.Response, body string) string {
	t.Helper()
	var r io.Reader
	switch ce := res.Header.Get("Content-Encoding"); ce {
	case "":
		return body
	case "gzip":
		zr, err := gzip.NewReader(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case "br":
		r = brotli.NewReader(strings.NewReader(body))
	default:
		t.Fatalf("Content-Encoding %q", ce)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decode %s: %v", res.Header.Get("Content-Encoding"), err)
	}
	return string(b)
}

// deliveryUpstream is a site with a large page (worth compressing) with a hero slot, whose
// fragment's HTML the test can change, as a CMS would.
func deliveryUpstream(t *testing.T, fragment *atomic.Value) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=600")
		w.Header().Set("Vary", "Accept-Encoding")
		fmt.Fprintf(w, `<!doctype html><title>shop</title><div data-seg-slot="hero">Welcome</div>%s<p>end</p>`,
			strings.Repeat("<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n", 100))
	})
	mux.HandleFunc("/fragments/hero.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Surrogate-Key", "hero-fragment")
		io.WriteString(w, fragment.Load().(string))
	})
	mux.HandleFunc("/who", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprintf(w, "user header=%q", r.Header.Get("X-User-Id"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

const deliveryRules = `segments:
  - name: vip
    rule: request.hasQuery("vip")
slots:
  - name: hero
    variants:
      - when: vip
        fragment: /fragments/hero.html
`

// pushRuleset uploads a rules file to the origin with the admin token and fails the test unless
// it is stored (201).
func pushRuleset(t *testing.T, originURL, adminToken, src string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", originURL+"/v1/rulesets", strings.NewReader(src))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 201 {
		t.Fatalf("PUT /v1/rulesets: %d %s", res.StatusCode, b)
	}
}

// waitSegmentListed waits until the origin's GET /v1/segments (the active ruleset's segments)
// names segment: the ruleset is live in the origin's engine.
func waitSegmentListed(t *testing.T, originURL, adminToken, segment string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest("GET", originURL+"/v1/segments", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if res, err := http.DefaultClient.Do(req); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == 200 && strings.Contains(string(b), segment) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("segment %s never listed by the origin: its ruleset did not become active", segment)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rulesetHistory is the origin's GET /v1/rulesets: the current version and how many are stored.
func rulesetHistory(t *testing.T, sys *system) (current uint64, versions int) {
	t.Helper()
	req, _ := http.NewRequest("GET", sys.originURL+"/v1/rulesets", nil)
	req.Header.Set("Authorization", "Bearer admin-secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list struct {
		Current  uint64            `json:"current"`
		Versions []json.RawMessage `json:"versions"`
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatalf("GET /v1/rulesets: %v", err)
	}
	return list.Current, len(list.Versions)
}

func putRulesText(t *testing.T, sys *system, src string) {
	t.Helper()
	pushRuleset(t, sys.originURL, "admin-secret", src)
}

func waitRuleset(t *testing.T, url, version string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if res, _ := rawGet(t, url); res.Header.Get("Segedge-Ruleset") == version {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ruleset %s never reached the edge", version)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func invalidate(t *testing.T, sys *system, body string) {
	t.Helper()
	req, _ := http.NewRequest("POST", sys.originURL+"/v1/invalidate", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin-secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		t.Fatalf("POST /v1/invalidate: %d", res.StatusCode)
	}
}

// Personalized pages go out compressed per the client's Accept-Encoding, and decode to exactly
// the page that client would get uncompressed.
func TestPersonalizedPagesAreCompressedPerClient(t *testing.T) {
	var frag atomic.Value
	frag.Store("<b>VIP hero v1</b>")
	sys := startSystem(t, services{}, deliveryUpstream(t, &frag).URL)
	putRulesText(t, sys, deliveryRules)
	waitRuleset(t, sys.edgeURL+"/", "1")

	for _, path := range []string{"/", "/?vip=1"} {
		_, plain := rawGet(t, sys.edgeURL+path)
		for _, tc := range []struct{ accept, coding string }{
			{"gzip, deflate, br", "br"}, {"gzip", "gzip"}, {"", ""},
			{"gzip, deflate, br", "br"}, // the second time from the compressed copy
		} {
			res, body := rawGet(t, sys.edgeURL+path, "Accept-Encoding", tc.accept)
			if got := res.Header.Get("Content-Encoding"); got != tc.coding {
				t.Fatalf("%s with Accept-Encoding %q: Content-Encoding %q, want %q", path, tc.accept, got, tc.coding)
			}
			if got := decoded(t, res, body); got != plain {
				t.Fatalf("%s with Accept-Encoding %q: decoded page differs from the identity one", path, tc.accept)
			}
			if tc.coding != "" {
				if len(body) > len(plain)/4 {
					t.Errorf("%s %s: %d bytes for a %d-byte page", path, tc.coding, len(body), len(plain))
				}
				vary := res.Header.Get("Vary")
				if !strings.Contains(vary, "Cookie") || !strings.Contains(vary, "Accept-Encoding") {
					t.Errorf("%s %s: Vary %q", path, tc.coding, vary)
				}
				if cc := res.Header.Get("Cache-Control"); !strings.Contains(cc, "private") {
					t.Errorf("%s %s: Cache-Control %q", path, tc.coding, cc)
				}
			}
		}
		wantHero := `<div data-seg-slot="hero">Welcome</div>`
		if path != "/" {
			wantHero = `<div data-seg-slot="hero"><b>VIP hero v1</b></div>`
		}
		if !strings.Contains(plain, wantHero) {
			t.Fatalf("%s: hero is not %s", path, wantHero)
		}
	}
}

// A purge that names a slot's fragment (by URL, prefix or surrogate key) changes the pages that
// show it, without a new ruleset version, compressed copies included.
func TestPurgingAFragmentRefreshesTheSlotsThatShowIt(t *testing.T) {
	var frag atomic.Value
	frag.Store("<b>VIP hero v1</b>")
	sys := startSystem(t, services{}, deliveryUpstream(t, &frag).URL)
	putRulesText(t, sys, deliveryRules)
	waitRuleset(t, sys.edgeURL+"/", "1")

	for i, purge := range []string{
		`{"urls":["/fragments/hero.html"]}`,
		`{"prefixes":["/fragments/"]}`,
		`{"tags":["hero-fragment"]}`,
		`{"urls":["http://shop.example/fragments/hero.html"]}`,
	} {
		want := fmt.Sprintf("<b>VIP hero v%d</b>", i+2)
		frag.Store(want)
		// Before the purge the edge keeps serving what it has.
		if _, body := rawGet(t, sys.edgeURL+"/?vip=1", "Accept-Encoding", "gzip"); strings.Contains(body, want) {
			t.Fatalf("%s: new fragment served before any purge", purge)
		}
		t0 := time.Now()
		invalidate(t, sys, purge)
		for {
			res, body := rawGet(t, sys.edgeURL+"/?vip=1", "Accept-Encoding", "gzip")
			if page := decoded(t, res, body); strings.Contains(page, want) {
				if res.Header.Get("Segedge-Ruleset") != "1" {
					t.Fatalf("the fragment changed through a new ruleset version, not the purge")
				}
				t.Logf("%s: fragment refreshed on the page %s after the purge", purge, time.Since(t0))
				break
			}
			if time.Since(t0) > 5*time.Second {
				t.Fatalf("%s: page still shows the old fragment 5 s after the purge", purge)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	// A purge that does not name the fragment leaves it alone.
	frag.Store("<b>not purged</b>")
	invalidate(t, sys, `{"urls":["/other"],"tags":["other"]}`)
	time.Sleep(300 * time.Millisecond)
	if _, body := rawGet(t, sys.edgeURL+"/?vip=1"); strings.Contains(body, "not purged") {
		t.Fatal("a purge of something else refetched the fragment")
	}
}

// Purges reach the edge's cache in milliseconds: the time from POST /v1/invalidate until the
// edge answers the URL with a fresh fetch. Logged, not asserted (machines vary); BENCHMARKS.md
// records it.
func TestPurgeReachesTheEdgeQuickly(t *testing.T) {
	var frag atomic.Value
	frag.Store("x")
	sys := startSystem(t, services{}, deliveryUpstream(t, &frag).URL)
	var lat []time.Duration
	for i := range 20 {
		url := fmt.Sprintf("%s/page-%d", sys.edgeURL, i)
		rawGet(t, url)
		if res, _ := rawGet(t, url); res.Header.Get("Segedge-Cache") != "HIT" {
			t.Fatalf("%s not cached: %s", url, res.Header.Get("Segedge-Cache"))
		}
		t0 := time.Now()
		invalidate(t, sys, fmt.Sprintf(`{"urls":["/page-%d"]}`, i))
		for {
			if res, _ := rawGet(t, url); res.Header.Get("Segedge-Cache") != "HIT" {
				break
			}
			if time.Since(t0) > 5*time.Second {
				t.Fatalf("%s still a HIT 5 s after its purge", url)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	t.Logf("POST /v1/invalidate → purged at the edge, 20 purges: p50 %s, max %s", lat[len(lat)/2], lat[len(lat)-1])
}

// A logged-in user named by a trusted hop is that user at the edge (no cookie needed); the same
// header from an untrusted address is ignored, removed, and the visitor gets a cookie as usual.
func TestTrustedUserHeader(t *testing.T) {
	var frag atomic.Value
	frag.Store("x")
	up := deliveryUpstream(t, &frag).URL

	t.Run("from a trusted hop", func(t *testing.T) {
		sys := startSystem(t, services{}, up, "SEGEDGE_USER_HEADER=X-User-Id", "SEGEDGE_TRUSTED_NETWORKS=127.0.0.0/8,::1")
		putRulesText(t, sys, "segments:\n  - name: shopper\n    rule: count(\"add_to_cart\", \"30m\") > 0\n"+
			"slots:\n  - name: hero\n    variants:\n      - when: shopper\n        html: '<h1>Your cart</h1>'\n")
		waitRuleset(t, sys.edgeURL+"/", "1")
		res, body := rawGet(t, sys.edgeURL+"/", "X-User-Id", "alice@example.com")
		if c := res.Header.Get("Set-Cookie"); c != "" {
			t.Fatalf("a user named by the trusted header got a cookie: %s", c)
		}
		if !strings.Contains(body, `data-seg-slot="hero">Welcome<`) {
			t.Fatal("alice sees a personalized hero before any event")
		}
		// The backend sends alice's event to the origin under her id.
		req, _ := http.NewRequest("POST", sys.originURL+"/v1/events",
			strings.NewReader(`[{"event_id":"t1","user_id":"alice@example.com","type":"add_to_cart"}]`))
		req.Header.Set("Authorization", "Bearer write-secret")
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 202 {
			t.Fatalf("POST /v1/events: %d", r.StatusCode)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, body := rawGet(t, sys.edgeURL+"/", "X-User-Id", "alice@example.com"); strings.Contains(body, "<h1>Your cart</h1>") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("alice's event never changed her page")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, body := rawGet(t, sys.edgeURL+"/", "X-User-Id", "bob"); strings.Contains(body, "<h1>Your cart</h1>") {
			t.Fatal("bob sees alice's personalization")
		}
		if _, body := rawGet(t, sys.edgeURL+"/who", "X-User-Id", "alice@example.com"); !strings.Contains(body, `"alice@example.com"`) {
			t.Fatalf("the trusted hop's header did not reach the upstream: %s", body)
		}
		// Not a valid user id: ignored.
		if res, _ := rawGet(t, sys.edgeURL+"/", "X-User-Id", strings.Repeat("a", 500)); res.Header.Get("Set-Cookie") == "" {
			t.Fatal("an invalid trusted id was used instead of a cookie")
		}
	})
	t.Run("from anywhere else", func(t *testing.T) {
		sys := startSystem(t, services{}, up, "SEGEDGE_USER_HEADER=X-User-Id", "SEGEDGE_TRUSTED_NETWORKS=10.9.8.0/24")
		res, _ := rawGet(t, sys.edgeURL+"/", "X-User-Id", "alice@example.com")
		if res.Header.Get("Set-Cookie") == "" {
			t.Fatal("the header from an untrusted address was believed (no cookie issued)")
		}
		if _, body := rawGet(t, sys.edgeURL+"/who", "X-User-Id", "alice@example.com"); !strings.Contains(body, `header=""`) {
			t.Fatalf("the untrusted header reached the upstream: %s", body)
		}
	})
}
