package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/segedge/segedge/core/testenv"
)

// A real browser (Debian's headless Chromium, driven with chromedp) on a demo page served
// through the edge: /segedge.js swaps a slot in place when the visitor's segments change, within
// a second and without a reload; and a change made while the page's stream is cut arrives once
// the network is back (EventSource reconnects with Last-Event-ID).

// browserSite is a shop page with a hero slot and the segedge client.
func browserSite(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=600")
		w.Write([]byte(`<!doctype html><html><head><title>shop</title></head><body>` +
			`<div id="hero" data-seg-slot="hero">Welcome</div><p>products</p>` +
			`<script src="/segedge.js"></script></body></html>`))
	})
	mux.HandleFunc("/fragments/vip-hero.html", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`VIP hero`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// newBrowser starts headless Chromium with a fresh profile; it skips the test when Chromium is
// not installed, unless SEGEDGE_REQUIRE_SERVICES=1.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if testenv.RequireServices() {
			t.Fatal("chromium is not installed (apt-get install chromium; .ci/run does) and SEGEDGE_REQUIRE_SERVICES=1")
		}
		t.Skip("chromium is not installed")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox, // tests run as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// jsBool evaluates expr in the page.
func jsBool(t *testing.T, ctx context.Context, expr string) bool {
	t.Helper()
	ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return ok
}

// waitJS polls expr every 10 ms until it is true and returns how long that took, or fails.
func waitJS(t *testing.T, ctx context.Context, expr string, timeout time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !jsBool(t, ctx, expr) {
		if time.Since(t0) > timeout {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("body")))
			t.Fatalf("not true within %s: %s\npage: %s", timeout, expr, html)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(t0)
}

func TestBrowserSwapsSlotInPlaceAndCatchesUpAfterCut(t *testing.T) {
	ctx := newBrowser(t)
	sys := startSystem(t, services{}, browserSite(t).URL)
	putRules(t, sys, "../scripts/demo/rules.yaml")
	streamWaitRuleset(t, sys, 1)
	// The browser reaches the edge through a proxy that can cut the network.
	px := newTCPProxy(t, strings.TrimPrefix(sys.edgeURL, "http://"))
	site := "http://" + px.addr

	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate(site+"/")); err != nil {
		t.Fatal(err)
	}
	const hero = `document.getElementById("hero").innerHTML`
	if !jsBool(t, tctx, hero+` === "Welcome"`) {
		t.Fatal("the first visit does not show the default hero")
	}
	// The client has the stream's first state; a marker shows whether the page is ever reloaded.
	waitJS(t, tctx, `window.segedge !== undefined && segedge.segments() !== null`, 10*time.Second)
	jsBool(t, tctx, `(window.segedgeMarker = 42, document.addEventListener("segedge:change", function () { window.segedgeChanges = (window.segedgeChanges || 0) + 1 }), true)`)

	// The visitor adds to cart through the client's beacon: the hero becomes the cart reminder.
	jsBool(t, tctx, `(segedge.track("add_to_cart", {amount: 30}), true)`)
	took := waitJS(t, tctx, hero+`.includes("Your cart is waiting")`, 5*time.Second)
	t.Logf("event to swapped slot in the browser: %s", took)
	if took > time.Second {
		t.Errorf("the slot changed %s after the event, want within 1s", took)
	}
	if !jsBool(t, tctx, `window.segedgeMarker === 42 && window.segedgeChanges >= 1`) {
		t.Fatal("the page was reloaded (marker gone) or segedge:change was not dispatched")
	}

	// Cut the network between browser and edge, change the visitor's segments meanwhile (a
	// purchase: no longer a cart abandoner, now highly engaged), then restore the network.
	cookies, err := chromedp.Run(tctx, func(ctx context.Context, tg *chromedp.Target) (network.GetCookiesResult, error) {
		return cdp.Call(ctx, tg, network.GetCookies, network.GetCookiesParams{URLs: []string{site + "/"}})
	})
	if err != nil {
		t.Fatal(err)
	}
	var uid string
	for _, c := range cookies.Cookies {
		if c.Name == "segedge_uid" {
			uid = c.Value
		}
	}
	if uid == "" {
		t.Fatalf("no segedge_uid cookie in the browser: %+v", cookies)
	}
	px.cut()
	streamBeacon(t, sys.edgeURL, uid, `[{"event_id":"browser-buy","type":"purchase_completed","props":{"amount":30}}]`)
	streamWaitVersion(t, sys, uid, 2, 1) // the edge has the new state while the browser is cut off
	time.Sleep(500 * time.Millisecond)
	if !jsBool(t, tctx, hero+`.includes("Your cart is waiting")`) {
		t.Fatal("the hero changed while the network was cut")
	}
	px.restore()
	took = waitJS(t, tctx, hero+` === "VIP hero"`, 15*time.Second)
	t.Logf("network restored to swapped slot: %s (EventSource retry is 2s)", took)
	if !jsBool(t, tctx, `window.segedgeMarker === 42 && window.segedgeChanges >= 2`) {
		t.Fatal("the page was reloaded, or segedge:change was not dispatched for the change made during the cut")
	}

	// A new ruleset changes what the same segments show: the open page follows.
	src, err := os.ReadFile("../scripts/demo/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v2 := strings.Replace(string(src), "fragment: /fragments/vip-hero.html", "html: 'VIP hero, ruleset 2'", 1)
	putRulesText(t, sys, v2)
	took = waitJS(t, tctx, hero+` === "VIP hero, ruleset 2"`, 10*time.Second)
	t.Logf("ruleset upload to swapped slot: %s", took)
	if !jsBool(t, tctx, `window.segedgeMarker === 42`) {
		t.Fatal("the page was reloaded")
	}
}
