package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/testenv"
)

const scrapeBefore = `# HELP segedge_origin_ingest_to_profile_seconds From event accepted to profile updated.
# TYPE segedge_origin_ingest_to_profile_seconds histogram
segedge_origin_ingest_to_profile_seconds_bucket{le="0.001"} 10
segedge_origin_ingest_to_profile_seconds_bucket{le="0.002"} 10
segedge_origin_ingest_to_profile_seconds_bucket{le="0.004"} 10
segedge_origin_ingest_to_profile_seconds_bucket{le="+Inf"} 10
segedge_origin_ingest_to_profile_seconds_sum 0.005
segedge_origin_ingest_to_profile_seconds_count 10
segedge_origin_events_applied_total 10
segedge_origin_events_rejected_total{reason="invalid"} 0
`

// After: 100 more observations, 50 in (0,1ms], 40 in (1ms,2ms], 10 in (2ms,4ms].
const scrapeAfter = `segedge_origin_ingest_to_profile_seconds_bucket{le="0.001"} 60
segedge_origin_ingest_to_profile_seconds_bucket{le="0.002"} 100
segedge_origin_ingest_to_profile_seconds_bucket{le="0.004"} 110
segedge_origin_ingest_to_profile_seconds_bucket{le="+Inf"} 110
segedge_origin_ingest_to_profile_seconds_sum 0.2
segedge_origin_ingest_to_profile_seconds_count 110
segedge_origin_events_applied_total 1.1e+02
segedge_origin_events_rejected_total{reason="invalid"} 3 1700000000000
`

func TestParseMetricsReadsSeriesWithAndWithoutLabels(t *testing.T) {
	m, err := parseMetrics(strings.NewReader(scrapeAfter))
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{
		`segedge_origin_events_applied_total`:                         110,
		`segedge_origin_events_rejected_total{reason="invalid"}`:      3,
		`segedge_origin_ingest_to_profile_seconds_bucket{le="+Inf"}`:  110,
		`segedge_origin_ingest_to_profile_seconds_bucket{le="0.001"}`: 60,
		`segedge_origin_ingest_to_profile_seconds_sum`:                0.2,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
}

func TestParseMetricsRejectsGarbage(t *testing.T) {
	for _, in := range []string{
		"x_total notanumber\n",
		"x_total\n",
		`x{le="1"}` + "\n",
		"x 1 2 3\n",
	} {
		if _, err := parseMetrics(strings.NewReader(in)); err == nil {
			t.Errorf("parseMetrics(%q): no error", in)
		}
	}
}

func TestHistogramQuantilesOfTheRunOnly(t *testing.T) {
	before, _ := parseMetrics(strings.NewReader(scrapeBefore))
	after, _ := parseMetrics(strings.NewReader(scrapeAfter))
	d := histDelta(before, after, "segedge_origin_ingest_to_profile_seconds")
	if n := d[len(d)-1].count; n != 100 {
		t.Fatalf("observations in the run = %v, want 100", n)
	}
	for _, tc := range []struct {
		q    float64
		want float64
		over bool
	}{
		{0.5, 0.001, false},   // rank 50 is the last of the first bucket
		{0.25, 0.0005, false}, // halfway into (0, 1ms]
		{0.7, 0.0015, false},  // rank 70: 20 of 40 into (1ms, 2ms]
		{0.95, 0.003, false},  // rank 95: 5 of 10 into (2ms, 4ms]
		{1.0, 0.004, false},
	} {
		v, over, ok := histQuantile(d, tc.q)
		if !ok || over != tc.over || math.Abs(v-tc.want) > 1e-9 {
			t.Errorf("q%.2f = %v over=%v ok=%v, want %v over=%v", tc.q, v, over, ok, tc.want, tc.over)
		}
	}
}

func TestHistogramQuantileInTheInfBucketSaysSo(t *testing.T) {
	bs := []bucket{{0.001, 1}, {0.002, 2}, {math.Inf(1), 100}}
	v, over, ok := histQuantile(bs, 0.99)
	if !ok || !over || v != 0.002 {
		t.Errorf("got %v over=%v ok=%v, want 0.002 over=true", v, over, ok)
	}
	if _, _, ok := histQuantile([]bucket{{0.001, 0}, {math.Inf(1), 0}}, 0.5); ok {
		t.Error("an empty histogram gave a quantile")
	}
	if s := histSummary(nil); s != "no observations" {
		t.Errorf("summary of nothing = %q", s)
	}
}

func TestQuantileNearestRank(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Millisecond, 0.99: 990 * time.Millisecond, 0.999: 999 * time.Millisecond, 1: time.Second, 0: time.Millisecond} {
		if got := quantile(s, q); got != want {
			t.Errorf("q%v = %s, want %s", q, got, want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing is not 0")
	}
}

func TestBatchIsValidJSONWithTheMix(t *testing.T) {
	g := newGenerator("lgtest", 100, 1)
	var n uint64
	next := func() uint64 { n++; return n }
	counts := map[string]int{}
	ids := map[string]bool{}
	for range 200 {
		b := g.batch(nil, 50, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), next)
		var evs []struct {
			ID     string         `json:"event_id"`
			UserID string         `json:"user_id"`
			Type   string         `json:"type"`
			TS     time.Time      `json:"ts"`
			Props  map[string]any `json:"props"`
		}
		if err := json.Unmarshal(b, &evs); err != nil {
			t.Fatalf("batch is not JSON: %v\n%s", err, b)
		}
		for _, e := range evs {
			if ids[e.ID] || !strings.HasPrefix(e.ID, "lgtest-") || !strings.HasPrefix(e.UserID, "lgtest-u") || e.Props == nil {
				t.Fatalf("bad event %+v", e)
			}
			ids[e.ID] = true
			counts[e.Type]++
		}
	}
	// 10,000 events: page_view ~70%, add_to_cart ~15%, identify and purchase_completed ~5%.
	for typ, want := range map[string]float64{"page_view": 0.70, "add_to_cart": 0.15, "identify": 0.05, "purchase_completed": 0.05} {
		if got := float64(counts[typ]) / 10000; math.Abs(got-want) > 0.02 {
			t.Errorf("%s share = %.3f, want %.2f±0.02", typ, got, want)
		}
	}
}

func TestNoUserDominatesTheLoad(t *testing.T) {
	g := newGenerator("lgtest", 10000, 7)
	counts := map[uint64]int{}
	const n = 200000
	for range n {
		counts[g.zipf.Uint64()]++
	}
	top := 0
	for _, c := range counts {
		top = max(top, c)
	}
	if share := float64(top) / n; share > 0.01 {
		t.Errorf("the most active user sends %.1f%% of the events, want under 1%%", 100*share)
	}
	if len(counts) < 5000 {
		t.Errorf("only %d of 10000 users active in %d events", len(counts), n)
	}
}

// fakeOrigin answers POST /v1/events like the origin (202, {"accepted": n}, rejecting every
// checkout_started event as a field error) and serves /metrics with what it "applied".
type fakeOrigin struct {
	mu                 sync.Mutex
	accepted, rejected int
}

func (f *fakeOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == "POST" && r.URL.Path == "/v1/events":
		if r.Header.Get("Authorization") != "Bearer wk" {
			w.WriteHeader(401)
			return
		}
		var evs []struct {
			Type string `json:"type"`
		}
		if err := json.NewDecoder(r.Body).Decode(&evs); err != nil {
			w.WriteHeader(400)
			return
		}
		type fe struct {
			Index  int    `json:"index"`
			Reason string `json:"reason"`
		}
		var res struct {
			Accepted int  `json:"accepted"`
			Rejected []fe `json:"rejected,omitempty"`
		}
		for i, e := range evs {
			if e.Type == "checkout_started" {
				res.Rejected = append(res.Rejected, fe{i, "not welcome here"})
				continue
			}
			res.Accepted++
		}
		f.accepted += res.Accepted
		f.rejected += len(res.Rejected)
		w.WriteHeader(202)
		json.NewEncoder(w).Encode(res)
	case r.URL.Path == "/metrics":
		// Every applied event took between 1ms and 2ms from ingest.
		fmt.Fprintf(w, "segedge_origin_events_applied_total %d\n", f.accepted)
		fmt.Fprintf(w, "segedge_origin_events_duplicate_total 0\n")
		fmt.Fprintf(w, "process_cpu_seconds_total %g\n", 1.5+float64(f.accepted)*20e-6) // 20µs per event
		fmt.Fprintf(w, "segedge_origin_ingest_to_profile_seconds_bucket{le=\"0.001\"} 0\n")
		fmt.Fprintf(w, "segedge_origin_ingest_to_profile_seconds_bucket{le=\"0.002\"} %d\n", f.accepted)
		fmt.Fprintf(w, "segedge_origin_ingest_to_profile_seconds_bucket{le=\"+Inf\"} %d\n", f.accepted)
	default:
		w.WriteHeader(404)
	}
}

func TestRunCountsWhatTheOriginAcceptedAndReadsItsHistogram(t *testing.T) {
	f := &fakeOrigin{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	o := options{origin: srv.URL, writeKey: "wk", rate: 4000, duration: 500 * time.Millisecond,
		users: 100, batch: 20, conc: 4, metrics: true, drain: 5 * time.Second}
	var out strings.Builder
	sum, err := run(context.Background(), o, &out)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.accepted == 0 || f.rejected == 0 {
		t.Fatalf("fake origin saw %d accepted, %d rejected; want both", f.accepted, f.rejected)
	}
	if sum.Accepted != int64(f.accepted) || sum.Rejected != int64(f.rejected) {
		t.Errorf("summary accepted %d rejected %d, origin accepted %d rejected %d", sum.Accepted, sum.Rejected, f.accepted, f.rejected)
	}
	if sent := f.accepted + f.rejected; sent < 1500 || sent > 2100 {
		t.Errorf("sent %d events in 0.5s at 4000/s", sent)
	}
	if !sum.Drained {
		t.Error("not drained although the origin applied everything")
	}
	if sum.ProfileP50 < 1 || sum.ProfileP50 > 2 || sum.ProfileP99 < 1 || sum.ProfileP99 > 2 {
		t.Errorf("ingest→profile p50 %.2fms p99 %.2fms, want within the 1–2ms bucket", sum.ProfileP50, sum.ProfileP99)
	}
	if math.Abs(sum.OriginCPUPerEvent-20) > 0.01 {
		t.Errorf("origin CPU per event = %.3fµs, want 20", sum.OriginCPUPerEvent)
	}
	if sum.DeltaP99 != -1 || sum.Deltas != 0 {
		t.Errorf("delta latency %v from %d deltas without -nats-url", sum.DeltaP99, sum.Deltas)
	}
	if !strings.Contains(out.String(), "segedge_origin_ingest_to_profile_seconds") {
		t.Errorf("report does not say where ingest→profile came from:\n%s", out.String())
	}
}

func TestRunMeasuresIngestToDeltaFromTheDeltasSubjects(t *testing.T) {
	n := testenv.StartNATS(t)
	f := &fakeOrigin{}
	// Like the origin's engine: one delta per accepted event, on the user's partition subject,
	// published 3ms after the request was accepted.
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", f.ServeHTTP)
	var requests atomic.Int32
	mux.HandleFunc("/v1/events", func(w http.ResponseWriter, r *http.Request) {
		acceptedAt := time.Now().UnixMilli()
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		f.ServeHTTP(w, r)
		var evs []struct {
			UserID string `json:"user_id"`
			Type   string `json:"type"`
		}
		json.Unmarshal(body, &evs)
		time.Sleep(3 * time.Millisecond)
		// Per partition, one message holding the request's deltas in a JSON array (delta format
		// 1), except that every other request is answered as an origin before batching did: a
		// message per delta (format 0).
		single := requests.Add(1)%2 == 0
		parts := map[int][]map[string]any{}
		for _, e := range evs {
			if e.Type == "checkout_started" {
				continue
			}
			d := map[string]any{"user_id": e.UserID, "version": 1, "cause": "event", "members": []string{}, "accepted_at": acceptedAt}
			p := event.Partition(e.UserID, 4)
			if single {
				b, _ := json.Marshal(d)
				n.Conn.Publish(n.Topology.DeltaSubject(p), b)
				continue
			}
			parts[p] = append(parts[p], d)
		}
		for p, ds := range parts {
			b, _ := json.Marshal(ds)
			n.Conn.Publish(n.Topology.DeltaSubject(p), b)
		}
		// A delta of someone else (an earlier run, another user) must not be counted.
		n.Conn.Publish(n.Topology.DeltaSubject(0), []byte(`{"user_id":"other","version":9,"accepted_at":1}`))
		n.Conn.Flush()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	o := options{origin: srv.URL, writeKey: "wk", rate: 2000, duration: 300 * time.Millisecond,
		users: 50, batch: 10, conc: 2, metrics: true, drain: 5 * time.Second,
		natsURL: n.URL, natsPrefix: n.Topology.Prefix}
	var out strings.Builder
	t0 := time.Now()
	sum, err := run(context.Background(), o, &out)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Deltas != int(sum.Accepted) {
		t.Errorf("measured %d deltas, want one per accepted event (%d)\n%s", sum.Deltas, sum.Accepted, out.String())
	}
	// 3ms before publishing, plus delivery (at 1ms resolution), and less than the whole run took.
	if took := time.Since(t0); sum.DeltaP50 < 3 || sum.DeltaP99 < sum.DeltaP50 || sum.DeltaP99 > float64(took.Milliseconds()) {
		t.Errorf("ingest→delta p50 %.1fms p99 %.1fms, want ≥3ms and within the run's %s", sum.DeltaP50, sum.DeltaP99, took)
	}
	if !strings.Contains(out.String(), "deltas of other users or causes ignored") {
		t.Errorf("report does not mention the ignored deltas:\n%s", out.String())
	}
}

// FuzzParseMetrics: whatever /metrics answers, parsing, bucket deltas and quantiles never panic
// (nonsense buckets give nonsense quantiles, but loadgen keeps running and says what it read).
func FuzzParseMetrics(f *testing.F) {
	f.Add(scrapeBefore)
	f.Add(scrapeAfter)
	f.Add("x_bucket{le=\"+Inf\"} 3\nx_bucket{le=\"0.5\"} 5\n")
	f.Add("x_bucket{le=\"NaN\"} 1\nx_bucket{le=\"1\"} NaN\n")
	f.Add("}{ 1\n{} 2 3\n")
	f.Fuzz(func(t *testing.T, in string) {
		m, err := parseMetrics(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, name := range []string{"x", "segedge_origin_ingest_to_profile_seconds"} {
			bs := histDelta(metrics{}, m, name)
			for _, q := range []float64{0, 0.5, 0.99, 1} {
				histQuantile(bs, q)
			}
			_ = histSummary(bs)
		}
	})
}
