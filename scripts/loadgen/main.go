// Command loadgen drives an origin's POST /v1/events with a shop-like event mix at a target rate
// and reports what the origin did with it: accepted events per second, rejections, HTTP latency,
// and the latency from an event being accepted to the origin acting on it.
//
// Two ingest→origin latencies are reported, each saying how it was measured:
//   - ingest→delta, from the DELTAS stream (-nats-url): every delta caused by an event carries the
//     event's accepted_at (Unix ms, stamped by the origin); loadgen subscribes to the deltas
//     subjects and takes now − accepted_at on receipt, for every delta of a message (one message
//     holds a worker batch's deltas). Deltas only flow while a ruleset is active.
//   - ingest→profile and ingest→delta from the origin's own histograms, scraped from /metrics
//     before and after the run; quantiles are interpolated inside the buckets (0.5ms, 1ms, 2ms …),
//     so they are only as fine as the buckets.
//
// Sending is open-loop: batches are due on a fixed schedule whatever the origin's answers take,
// and "schedule latency" (due time → answer) shows the queueing a slow origin causes, which HTTP
// latency (request start → answer) hides.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

type options struct {
	origin, writeKey     string
	rate                 int
	duration, drain      time.Duration
	users, batch, conc   int
	natsURL, natsPrefix  string
	metrics, jsonSummary bool
	cleanup              bool
	cpuProfile           string
}

func main() {
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&o.origin, "origin", "http://127.0.0.1:7070", "origin base URL")
	fs.StringVar(&o.writeKey, "write-key", os.Getenv("SEGEDGE_WRITE_KEY"), "bearer key for POST /v1/events (default $SEGEDGE_WRITE_KEY)")
	fs.IntVar(&o.rate, "rate", 1000, "target events per second")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to send")
	fs.IntVar(&o.users, "users", 10000, "distinct users (Zipf-distributed activity)")
	fs.IntVar(&o.batch, "batch", 50, "events per request")
	fs.IntVar(&o.conc, "concurrency", 16, "requests in flight at most")
	fs.StringVar(&o.natsURL, "nats-url", "", "NATS URL to measure ingest→delta from the DELTAS subjects; empty: skip")
	fs.StringVar(&o.natsPrefix, "nats-prefix", "", "the origin's SEGEDGE_NATS_PREFIX")
	fs.BoolVar(&o.metrics, "metrics", true, "scrape the origin's /metrics before and after for its latency histograms")
	fs.DurationVar(&o.drain, "drain", 30*time.Second, "after sending, wait up to this long for the origin to apply every accepted event")
	fs.BoolVar(&o.jsonSummary, "json", false, "print one JSON summary line at the end (for scripts)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write loadgen's own CPU profile to this file (to see what measuring costs)")
	fs.BoolVar(&o.cleanup, "cleanup", false, "send nothing: delete the JetStream streams under -nats-prefix (after a benchmark) and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if o.cleanup {
		if err := cleanup(o.natsURL, o.natsPrefix); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := o.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stopProfile, err := startCPUProfile(o.cpuProfile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
	sum, err := run(ctx, o, os.Stdout)
	stopProfile()
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
	if o.jsonSummary {
		b, _ := json.Marshal(sum)
		fmt.Println(string(b))
	}
}

func (o options) validate() error {
	var errs []error
	if o.rate <= 0 || o.batch <= 0 || o.conc <= 0 || o.users <= 1 || o.duration <= 0 {
		errs = append(errs, errors.New("-rate, -batch, -concurrency and -duration must be positive, -users at least 2"))
	}
	if o.writeKey == "" {
		errs = append(errs, errors.New("-write-key (or SEGEDGE_WRITE_KEY) is required"))
	}
	if !strings.HasPrefix(o.origin, "http://") && !strings.HasPrefix(o.origin, "https://") {
		errs = append(errs, fmt.Errorf("-origin %q: want an http(s) URL", o.origin))
	}
	return errors.Join(errs...)
}

// summary is the machine-readable result of a run (-json). Latencies are in milliseconds; a
// negative value means not measured.
type summary struct {
	TargetRate     int     `json:"target_rate"`
	OfferedPerSec  float64 `json:"offered_per_s"`
	AcceptedPerSec float64 `json:"accepted_per_s"`
	Accepted       int64   `json:"accepted"`
	Rejected       int64   `json:"rejected"`
	Errors         int64   `json:"errors"`
	HTTPP50        float64 `json:"http_p50_ms"`
	HTTPP99        float64 `json:"http_p99_ms"`
	SchedP99       float64 `json:"schedule_p99_ms"`
	DeltaP50       float64 `json:"delta_p50_ms"`
	DeltaP99       float64 `json:"delta_p99_ms"`
	DeltaP999      float64 `json:"delta_p999_ms"`
	Deltas         int     `json:"deltas"`
	// DeltaBytes is the average size of this run's DELTAS messages per delta they held (JSON
	// bytes, the deltas of other users included if a message mixed them).
	DeltaBytes      float64 `json:"delta_bytes_per_delta"`
	ProfileP50      float64 `json:"profile_p50_ms"`
	ProfileP99      float64 `json:"profile_p99_ms"`
	ProfileP999     float64 `json:"profile_p999_ms"`
	ProfileP99Over  bool    `json:"profile_p99_over,omitempty"`
	Drained         bool    `json:"drained"`
	AppliedPerSec   float64 `json:"applied_per_s"` // by the origin over run and drain`
	DrainSeconds    float64 `json:"drain_s"`
	ProfileMeasured string  `json:"profile_measured"`
	// CPU time per accepted event, in microseconds, over the run and the drain: the origin's
	// (process_cpu_seconds_total) and loadgen's own; -1 when not measured.
	OriginCPUPerEvent  float64 `json:"origin_cpu_us_per_event"`
	LoadgenCPUPerEvent float64 `json:"loadgen_cpu_us_per_event"`
}

// stats are the senders' shared counters. Latency samples are kept per sending goroutine
// (samples) and merged at the end, so recording one takes no lock.
type stats struct {
	accepted, rejected, errors, requests atomic.Int64
	mu                                   sync.Mutex // guards firstErr
	firstErr                             string
}

// samples are one sending goroutine's latencies.
type samples struct {
	http, sched latencies
}

// merge appends the samples of every goroutine into one.
func merge(per []samples) samples {
	var all samples
	for _, p := range per {
		all.http = append(all.http, p.http...)
		all.sched = append(all.sched, p.sched...)
	}
	return all
}

func run(ctx context.Context, o options, out io.Writer) (*summary, error) {
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	runID := "lg" + hex.EncodeToString(rb[:])
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: o.conc, MaxIdleConnsPerHost: o.conc, IdleConnTimeout: time.Minute,
			// Room for a whole request (a batch of 50 events is ~10 KiB), so headers and body
			// leave in one write instead of three or more (4 KiB by default).
			WriteBufferSize: 64 << 10,
		},
	}

	// The delta subscription starts first, so no delta of this run is missed.
	deltas := newDeltaRecorder(runID, time.Now().UnixMilli())
	if o.natsURL != "" {
		nc, err := nats.Connect(o.natsURL, nats.Name("segedge-loadgen"))
		if err != nil {
			return nil, fmt.Errorf("connect to NATS at %s: %w", o.natsURL, err)
		}
		defer nc.Close()
		subj := strings.ToLower(o.natsPrefix) + "seg.deltas.*"
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) { deltas.record(m.Data, time.Now().UnixMilli()) })
		if err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", subj, err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		if err := nc.Flush(); err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", subj, err)
		}
		defer sub.Unsubscribe()
	}

	var before metrics
	if o.metrics {
		var err error
		if before, err = scrape(ctx, client, o.origin); err != nil {
			return nil, err
		}
	}

	cpu0 := selfCPU()
	fmt.Fprintf(out, "loadgen %s: %d events/s for %s to %s, %d users, %d events/request, %d in flight at most\n",
		runID, o.rate, o.duration, o.origin, o.users, o.batch, o.conc)
	st := &stats{}
	var seq atomic.Uint64
	next := func() uint64 { return seq.Add(1) }
	type job struct{ due time.Time }
	jobs := make(chan job, o.conc)
	var wg sync.WaitGroup
	p := newPoster(client, o)
	perWorker := make([]samples, o.conc)
	for w := range o.conc {
		g := newGenerator(runID, o.users, uint64(w)+1)
		mine := &perWorker[w]
		wg.Go(func() {
			var body []byte
			var answer bytes.Buffer
			for j := range jobs {
				body = g.batch(body[:0], o.batch, time.Now(), next)
				p.send(ctx, body, &answer, j.due, st, mine)
			}
		})
	}
	interval := time.Duration(float64(time.Second) * float64(o.batch) / float64(o.rate))
	t0 := time.Now()
	end := t0.Add(o.duration)
	batches := 0
	for due := t0; due.Before(end) && ctx.Err() == nil; due = due.Add(interval) {
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- job{due: due}:
			batches++
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(t0)

	sum := &summary{TargetRate: o.rate, Accepted: st.accepted.Load(), Rejected: st.rejected.Load(), Errors: st.errors.Load()}
	sum.OfferedPerSec = float64(batches*o.batch) / elapsed.Seconds()
	sum.AcceptedPerSec = float64(sum.Accepted) / elapsed.Seconds()
	fmt.Fprintf(out, "sent     %d requests in %s: offered %.0f events/s (target %d)\n", st.requests.Load(), elapsed.Round(time.Millisecond), sum.OfferedPerSec, o.rate)
	fmt.Fprintf(out, "accepted %d events (%.0f/s), rejected %d, failed requests %d", sum.Accepted, sum.AcceptedPerSec, sum.Rejected, sum.Errors)
	if st.firstErr != "" {
		fmt.Fprintf(out, " (first: %s)", st.firstErr)
	}
	fmt.Fprintln(out)
	lat := merge(perWorker)
	fmt.Fprintf(out, "HTTP latency     (request start → 202):  %s\n", lat.http.summary())
	fmt.Fprintf(out, "schedule latency (batch due → 202):      %s\n", lat.sched.summary())
	sum.HTTPP50, sum.HTTPP99 = ms(lat.http, 0.5), ms(lat.http, 0.99)
	sum.SchedP99 = ms(lat.sched, 0.99)

	// Wait for the origin to apply everything it accepted, so the histograms below cover the
	// whole run, backlog included.
	sum.ProfileP50, sum.ProfileP99, sum.ProfileP999 = -1, -1, -1
	sum.OriginCPUPerEvent, sum.LoadgenCPUPerEvent = -1, -1
	if o.metrics {
		t1 := time.Now()
		target := before["segedge_origin_events_applied_total"] + before["segedge_origin_events_duplicate_total"] + float64(sum.Accepted)
		var after metrics
		for {
			var err error
			if after, err = scrape(ctx, client, o.origin); err != nil {
				return nil, err
			}
			done := after["segedge_origin_events_applied_total"]+after["segedge_origin_events_duplicate_total"] >= target
			if done || time.Since(t1) > o.drain || ctx.Err() != nil {
				sum.Drained = done
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		sum.DrainSeconds = time.Since(t1).Seconds()
		fmt.Fprintf(out, "origin backlog drained %v, %.1fs after the last send\n", sum.Drained, sum.DrainSeconds)
		// When a backlog formed, this is the most the engine applied per second.
		applied := after["segedge_origin_events_applied_total"] - before["segedge_origin_events_applied_total"]
		sum.AppliedPerSec = applied / (elapsed.Seconds() + sum.DrainSeconds)
		fmt.Fprintf(out, "origin applied %.0f events in %.1fs of run and drain: %.0f/s\n", applied, elapsed.Seconds()+sum.DrainSeconds, sum.AppliedPerSec)
		prof := histDelta(before, after, "segedge_origin_ingest_to_profile_seconds")
		del := histDelta(before, after, "segedge_origin_ingest_to_delta_seconds")
		upd := histDelta(before, after, "segedge_origin_profile_update_duration_seconds")
		pub := histDelta(before, after, "segedge_origin_events_publish_duration_seconds")
		fmt.Fprintf(out, "from the origin's /metrics histograms (bucket-interpolated; buckets 0.5ms·2^k):\n")
		fmt.Fprintf(out, "  ingest→profile  segedge_origin_ingest_to_profile_seconds:        %s\n", histSummary(prof))
		fmt.Fprintf(out, "  ingest→delta    segedge_origin_ingest_to_delta_seconds:          %s\n", histSummary(del))
		fmt.Fprintf(out, "  store update    segedge_origin_profile_update_duration_seconds:  %s\n", histSummary(upd))
		fmt.Fprintf(out, "  JetStream store segedge_origin_events_publish_duration_seconds:  %s\n", histSummary(pub))
		if c0, ok := before["process_cpu_seconds_total"]; ok && sum.Accepted > 0 {
			sum.OriginCPUPerEvent = (after["process_cpu_seconds_total"] - c0) * 1e6 / float64(sum.Accepted)
			fmt.Fprintf(out, "  origin CPU      process_cpu_seconds_total:                       %.1fµs per accepted event (run and drain)\n", sum.OriginCPUPerEvent)
		}
		sum.ProfileMeasured = "origin /metrics histogram segedge_origin_ingest_to_profile_seconds, bucket-interpolated"
		if v, _, ok := histQuantile(prof, 0.5); ok {
			var over bool
			sum.ProfileP50 = v * 1000
			v, over, _ = histQuantile(prof, 0.99)
			sum.ProfileP99, sum.ProfileP99Over = v*1000, over
			v, _, _ = histQuantile(prof, 0.999)
			sum.ProfileP999 = v * 1000
		}
	}

	if sum.Accepted > 0 {
		sum.LoadgenCPUPerEvent = (selfCPU() - cpu0).Seconds() * 1e6 / float64(sum.Accepted)
		fmt.Fprintf(out, "loadgen's own CPU: %.1fµs per accepted event (it shares the machine)\n", sum.LoadgenCPUPerEvent)
	}
	sum.DeltaP50, sum.DeltaP99, sum.DeltaP999 = -1, -1, -1
	if o.natsURL != "" {
		// Deltas published at the end of the drain may be in flight: wait until none arrived for
		// 500ms (at most 5s).
		for quiet, seen, t1 := 0, -1, time.Now(); quiet < 5 && time.Since(t1) < 5*time.Second; {
			time.Sleep(100 * time.Millisecond)
			if n := deltas.seen(); n == seen {
				quiet++
			} else {
				quiet, seen = 0, n
			}
		}
		deltas.mu.Lock()
		deltaLat, deltaOther := deltas.lat, deltas.other
		sum.Deltas = len(deltaLat)
		fmt.Fprintf(out, "ingest→delta on DELTAS (now − accepted_at, 1ms resolution): %s", deltaLat.summary())
		if deltaOther > 0 {
			fmt.Fprintf(out, "; %d deltas of other users or causes ignored", deltaOther)
		}
		if deltas.held > 0 {
			sum.DeltaBytes = float64(deltas.bytes) / float64(deltas.held)
			fmt.Fprintf(out, "; %.0f bytes per delta on DELTAS", sum.DeltaBytes)
		}
		fmt.Fprintln(out)
		if len(deltaLat) == 0 {
			fmt.Fprintln(out, "  no deltas for this run's users: the origin publishes deltas only while a ruleset is active")
		} else {
			sum.DeltaP50, sum.DeltaP99, sum.DeltaP999 = ms(deltaLat, 0.5), ms(deltaLat, 0.99), ms(deltaLat, 0.999)
		}
		deltas.mu.Unlock()
	}
	return sum, nil
}

// ms is the q-quantile of samples in milliseconds, -1 without samples.
func ms(l latencies, q float64) float64 {
	if len(l) == 0 {
		return -1
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return float64(quantile(s, q)) / float64(time.Millisecond)
}

// poster sends batches to the origin; the URL and the authorization header are built once.
type poster struct {
	client    *http.Client
	url, auth string
	batch     int
}

func newPoster(client *http.Client, o options) *poster {
	return &poster{client: client, url: o.origin + "/v1/events", auth: "Bearer " + o.writeKey, batch: o.batch}
}

// send posts one batch and records the outcome: counters in st, latencies in mine (the calling
// goroutine's own). answer is the caller's buffer for the response body, reused across calls.
func (p *poster) send(ctx context.Context, body []byte, answer *bytes.Buffer, due time.Time, st *stats, mine *samples) {
	st.requests.Add(1)
	req, err := http.NewRequestWithContext(ctx, "POST", p.url, bytes.NewReader(body))
	if err != nil {
		st.fail(int64(p.batch), err.Error())
		return
	}
	req.Header["Authorization"] = []string{p.auth}
	req.Header["Content-Type"] = []string{"application/json"}
	t0 := time.Now()
	res, err := p.client.Do(req)
	if err != nil {
		st.errors.Add(1)
		st.fail(int64(p.batch), err.Error())
		return
	}
	answer.Reset()
	_, _ = answer.ReadFrom(res.Body)
	res.Body.Close()
	done := time.Now()
	raw := answer.Bytes()
	if res.StatusCode != http.StatusAccepted {
		st.errors.Add(1)
		st.fail(int64(p.batch), fmt.Sprintf("HTTP %d: %s", res.StatusCode, strings.TrimSpace(string(raw))))
		return
	}
	var ans struct {
		Accepted int `json:"accepted"`
	}
	_ = json.Unmarshal(raw, &ans)
	st.accepted.Add(int64(ans.Accepted))
	if r := p.batch - ans.Accepted; r > 0 {
		st.fail(int64(r), fmt.Sprintf("HTTP 202 with %d events rejected: %s", r, strings.TrimSpace(string(raw))))
	}
	mine.http = append(mine.http, done.Sub(t0))
	mine.sched = append(mine.sched, done.Sub(due))
}

func (st *stats) fail(events int64, msg string) {
	st.rejected.Add(events)
	st.mu.Lock()
	if st.firstErr == "" {
		msg = strings.Join(strings.Fields(msg), " ")
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		st.firstErr = msg
	}
	st.mu.Unlock()
}

// scrape reads the origin's /metrics.
func scrape(ctx context.Context, c *http.Client, origin string) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", origin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", origin, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s/metrics: HTTP %d", origin, res.StatusCode)
	}
	m, err := parseMetrics(res.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", origin, err)
	}
	return m, nil
}

// cleanup deletes the streams (and key-value buckets and object stores, which are streams KV_…
// and OBJ_… too) whose names start with the prefix, as the origin names them: a benchmark
// leaves nothing behind on a shared NATS.
func cleanup(url, prefix string) error {
	if url == "" || prefix == "" {
		return errors.New("-cleanup needs -nats-url and a non-empty -nats-prefix")
	}
	nc, err := nats.Connect(url, nats.Name("segedge-loadgen"))
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := strings.ToUpper(prefix)
	var names []string
	lister := js.StreamNames(ctx)
	for name := range lister.Name() {
		if strings.HasPrefix(name, up) || strings.HasPrefix(name, "KV_"+up) || strings.HasPrefix(name, "OBJ_"+up) {
			names = append(names, name)
		}
	}
	if err := lister.Err(); err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	for _, name := range names {
		if err := js.DeleteStream(ctx, name); err != nil {
			return fmt.Errorf("delete stream %s: %w", name, err)
		}
	}
	fmt.Printf("deleted %d streams under prefix %q\n", len(names), prefix)
	return nil
}

// startCPUProfile starts writing a CPU profile to path (nothing when path is empty) and returns
// the function that finishes it: loadgen shares the machine with what it measures, so what it
// spends itself is worth looking at.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: cpu profile %s: %v\n", path, err)
		}
	}, nil
}

// selfCPU is the CPU time (user and system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// deltaRecorder collects the ingest→delta latencies of this run's deltas, fed by the DELTAS
// subscription's handler (one goroutine).
type deltaRecorder struct {
	prefix  []byte // this run's user ids start with it
	startMs int64  // deltas of events accepted before the run are not this run's
	stamps  []deltaStamp

	mu    sync.Mutex // guards lat, other and bytes, which the report reads
	lat   latencies
	other int // deltas of other users, causes or runs, and unreadable messages
	// bytes and held: the body sizes of the messages that held deltas of this run, and how
	// many deltas they held in all.
	bytes, held int
}

func newDeltaRecorder(runID string, startMs int64) *deltaRecorder {
	return &deltaRecorder{prefix: []byte(runID + "-"), startMs: startMs}
}

// record takes the latency of every delta of this run in one DELTAS message received at nowMs.
// Not safe for concurrent use (a subscription calls its handler on one goroutine).
func (r *deltaRecorder) record(msg []byte, nowMs int64) {
	var err error
	r.stamps, err = deltaStamps(msg, r.stamps[:0])
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.other++
		return
	}
	mine := false
	for _, d := range r.stamps {
		if d.AcceptedAt < r.startMs || !bytes.HasPrefix(d.UserID, r.prefix) {
			r.other++
			continue
		}
		mine = true
		r.lat = append(r.lat, time.Duration(nowMs-d.AcceptedAt)*time.Millisecond)
	}
	if mine {
		r.bytes += len(msg)
		r.held += len(r.stamps)
	}
}

// seen is how many deltas were recorded or ignored so far.
func (r *deltaRecorder) seen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lat) + r.other
}
