package e2e

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// swapRules is a ruleset whose hero says which version produced it, so a response that mixed two
// versions (header of one, body of another) is visible.
func swapRules(n int) string {
	return fmt.Sprintf(`segments:
  - name: everyone
    rule: request.bucket >= 0
slots:
  - name: hero
    variants:
      - when: everyone
        html: 'v%d'
`, n)
}

func TestRulesetSwapsReachEveryEdgeWithoutFailedOrMixedResponses(t *testing.T) {
	up := siteUpstream(t)
	sys := startSystem(t, services{}, up.URL)
	// A second edge on the same NATS.
	_, edge2URL, _ := startEdge(t, sys, up.URL)
	edges := []string{sys.edgeURL, edge2URL}

	push := func(n int) {
		req, _ := http.NewRequest("PUT", sys.originURL+"/v1/rulesets", strings.NewReader(swapRules(n)))
		req.Header.Set("Authorization", "Bearer admin-secret")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 201 {
			t.Fatalf("push %d: %d", n, res.StatusCode)
		}
	}
	var whyMu sync.Mutex
	var why []string // the first few failures, so a red run says what went wrong
	note := func(format string, args ...any) {
		whyMu.Lock()
		defer whyMu.Unlock()
		if len(why) < 5 {
			why = append(why, fmt.Sprintf(format, args...))
		}
	}
	versionOn := func(edge string) (string, string, int) {
		res, err := http.Get(edge + "/")
		if err != nil {
			note("GET %s: %v", edge, err)
			return "", "", 0
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.Header.Get("Segedge-Ruleset"), string(b), res.StatusCode
	}

	// Steady load on both edges while versions swap.
	stop := make(chan struct{})
	var failed, mixed, total atomic.Int64
	var wg sync.WaitGroup
	for _, edge := range edges {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					v, body, code := versionOn(edge)
					total.Add(1)
					if code != 200 {
						failed.Add(1)
						if code != 0 {
							note("GET %s: status %d, body %.200q", edge, code, body)
						}
						continue
					}
					if v != "" && !strings.Contains(body, `data-seg-slot="hero">v`+v+`<`) {
						mixed.Add(1)
						note("GET %s: Segedge-Ruleset %s but body %.300q", edge, v, body)
					}
				}
			}()
		}
	}
	var lat []time.Duration
	for n := 1; n <= 50; n++ {
		t0 := time.Now()
		push(n)
		want := fmt.Sprint(n)
		for _, edge := range edges {
			for {
				if v, _, _ := versionOn(edge); v == want {
					break
				}
				if time.Since(t0) > 10*time.Second {
					t.Fatalf("version %d not live on %s after 10s", n, edge)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		lat = append(lat, time.Since(t0))
	}
	close(stop)
	wg.Wait()
	slices.Sort(lat)
	t.Logf("push → live on both edges over 50 pushes: p50 %s, max %s; %d requests during the swaps", lat[len(lat)/2], lat[len(lat)-1], total.Load())
	if f, m := failed.Load(), mixed.Load(); f != 0 || m != 0 {
		t.Fatalf("%d failed and %d mixed responses during 50 swaps; first ones:\n%s", f, m, strings.Join(why, "\n"))
	}
}
