package proxy

import (
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/edge/compress"
)

func decodeBody(t *testing.T, coding, body string) string {
	t.Helper()
	var r io.Reader
	switch coding {
	case "":
		return body
	case "gzip":
		zr, err := gzip.NewReader(strings.NewReader(body))
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		r = zr
	case "br":
		r = brotli.NewReader(strings.NewReader(body))
	default:
		t.Fatalf("unexpected Content-Encoding %q", coding)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decode %s: %v", coding, err)
	}
	return string(b)
}

func newCompressingProxy(t *testing.T, o *origin, clk *clock) *cachingProxy {
	t.Helper()
	cc, err := compress.New(1<<20, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return newCachingProxy(t, o, clk, Config{Compress: cc})
}

// The cache keeps one identity copy and every client gets the coding it asked for.
func TestCompressionServesEachClientItsCodingFromOneIdentityCopy(t *testing.T) {
	clk := newClock()
	page := "<html><body>" + strings.Repeat("<p>personalized at the edge</p>", 200) + "</body></html>"
	var gotAE []string
	o := newOrigin(t, nil)
	o.set(func(w http.ResponseWriter, r *http.Request) {
		gotAE = append(gotAE, r.Header.Get("Accept-Encoding"))
		fixed(clk, 200, page, "Content-Type", "text/html; charset=utf-8", "Cache-Control", "max-age=60",
			"ETag", `"v1"`, "Vary", "Accept-Encoding")(w, r)
	})
	cp := newCompressingProxy(t, o, clk)

	for _, tc := range []struct {
		accept, wantCoding, wantETag string
	}{
		{"gzip, deflate, br", "br", `W/"v1"`},
		{"gzip", "gzip", `W/"v1"`},
		{"", "", `"v1"`},
		{"br;q=0, gzip;q=0", "", `"v1"`},
		{"gzip, deflate, br", "br", `W/"v1"`}, // from the compressed-body cache now
	} {
		a := cp.get(t, "/page", "Accept-Encoding", tc.accept)
		if a.status != 200 {
			t.Fatalf("Accept-Encoding %q: status %d", tc.accept, a.status)
		}
		if got := a.header.Get("Content-Encoding"); got != tc.wantCoding {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q, want %q", tc.accept, got, tc.wantCoding)
		}
		if got := decodeBody(t, a.header.Get("Content-Encoding"), a.body); got != page {
			t.Errorf("Accept-Encoding %q: decoded body differs from the page (%d bytes, want %d)", tc.accept, len(got), len(page))
		}
		if got := a.header.Get("ETag"); got != tc.wantETag {
			t.Errorf("Accept-Encoding %q: ETag %s, want %s", tc.accept, got, tc.wantETag)
		}
		if got := a.header.Get("Vary"); got != "Accept-Encoding" {
			t.Errorf("Accept-Encoding %q: Vary %q", tc.accept, got)
		}
	}
	if n := o.hits.Load(); n != 1 {
		t.Errorf("upstream saw %d requests, want 1 (one identity copy for every coding)", n)
	}
	if len(gotAE) != 1 || gotAE[0] != "identity" {
		t.Errorf("upstream was asked with Accept-Encoding %q, want identity", gotAE)
	}
}

func TestCompressionLeavesWhatItShouldAlone(t *testing.T) {
	clk := newClock()
	big := strings.Repeat("x", 4096)
	for _, tc := range []struct {
		name    string
		body    string
		headers []string
	}{
		{"image", big, []string{"Content-Type", "image/png"}},
		{"small", "<p>hi</p>", []string{"Content-Type", "text/html"}},
		{"already encoded", big, []string{"Content-Type", "text/html", "Content-Encoding", "gzip"}},
		{"font", big, []string{"Content-Type", "font/woff2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t, fixed(clk, 200, tc.body, append([]string{"Cache-Control", "max-age=60"}, tc.headers...)...))
			cp := newCompressingProxy(t, o, clk)
			for range 2 {
				a := cp.get(t, "/x", "Accept-Encoding", "gzip, br")
				want := ""
				if tc.name == "already encoded" {
					want = "gzip" // as the upstream sent it
				}
				if got := a.header.Get("Content-Encoding"); got != want {
					t.Errorf("Content-Encoding %q, want %q", got, want)
				}
				if a.body != tc.body {
					t.Errorf("body changed")
				}
			}
		})
	}
}

// Requests that pass the cache keep the client's Accept-Encoding: the upstream compresses them.
func TestCompressionPassKeepsTheClientsAcceptEncoding(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, fixed(clk, 200, "private", "Cache-Control", "private"))
	cp := newCompressingProxy(t, o, clk)
	cp.get(t, "/me", "Accept-Encoding", "gzip")
	cp.get(t, "/me", "Accept-Encoding", "gzip") // remembered uncacheable: passes straight
	if got := o.lastRequest().Header.Get("Accept-Encoding"); got != "gzip" {
		t.Errorf("upstream got Accept-Encoding %q on a pass, want the client's gzip", got)
	}
}

func TestAddVary(t *testing.T) {
	for _, tc := range []struct{ before, want string }{
		{"", "Accept-Encoding"},
		{"Cookie", "Cookie, Accept-Encoding"},
		{"cookie, accept-encoding", "cookie, accept-encoding"},
		{"*", "*"},
	} {
		h := &fasthttp.ResponseHeader{}
		if tc.before != "" {
			h.Set("Vary", tc.before)
		}
		addVary(h, "Accept-Encoding")
		if got := string(h.Peek("Vary")); got != tc.want {
			t.Errorf("Vary %q + Accept-Encoding = %q, want %q", tc.before, got, tc.want)
		}
	}
}
