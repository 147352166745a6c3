// Command ssebench opens N concurrent Server-Sent Events subscribers on one edge
// (/user/segments/stream, one visitor each), then sends events for some of those visitors to the
// origin and reports:
//
//   - memory per connection: the edge's resident set (VmRSS of -edge-pid) and its Go heap+stacks
//     (from the edge's /metrics) after all N streams are open and have their first message, minus
//     the same before any was opened, divided by N;
//   - event → subscriber latency: from just before POST /v1/events leaves this program (so the
//     HTTP round trip to the origin is included: an upper bound of "accepted at the origin") to the
//     SSE message with that visitor's new state being read by that visitor's subscriber, p50/p99/max.
//
// The origin must evaluate a ruleset in which one add_to_cart changes a fresh visitor's segments
// (scripts/demo/rules.yaml: cart_abandoner); scripts/bench-sse.sh sets everything up.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type options struct {
	edge, edgeOps, origin, writeKey string
	edgePID                         int
	n, events, rate, senders        int
	openConc                        int
	timeout                         time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.edge, "edge", "http://127.0.0.1:8080", "edge base URL")
	flag.StringVar(&o.edgeOps, "edge-ops", "http://127.0.0.1:8081", "edge operations base URL (/metrics)")
	flag.StringVar(&o.origin, "origin", "http://127.0.0.1:7070", "origin base URL")
	flag.StringVar(&o.writeKey, "write-key", os.Getenv("SEGEDGE_WRITE_KEY"), "bearer key for the origin's POST /v1/events")
	flag.IntVar(&o.edgePID, "edge-pid", 0, "process id of the edge, for its resident set (0: not measured)")
	flag.IntVar(&o.n, "n", 10000, "concurrent SSE subscribers (one visitor each)")
	flag.IntVar(&o.events, "events", 2000, "events to send, one per visitor (at most n)")
	flag.IntVar(&o.rate, "rate", 200, "events per second")
	flag.IntVar(&o.senders, "senders", 8, "concurrent event senders")
	flag.IntVar(&o.openConc, "open-concurrency", 64, "streams opened at once while connecting")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the last message after the last event")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "ssebench:", err)
		os.Exit(1)
	}
}

// sub is one subscriber: a visitor and the instant its event was sent.
type sub struct {
	cookie, id string
	sentAt     atomic.Int64 // UnixNano; 0: no event sent yet
	latency    atomic.Int64 // ns from sentAt to the message; 0: not received
	first      chan struct{}
}

func run(o options) error {
	o.events = min(o.events, o.n)
	u, err := url.Parse(o.edge)
	if err != nil {
		return fmt.Errorf("-edge: %w", err)
	}
	subs := make([]*sub, o.n)
	fmt.Printf("getting %d visitor cookies from the edge…\n", o.n)
	if err := forEach(o.n, o.openConc, func(i int) error {
		c, err := visitorCookie(o.edge)
		if err != nil {
			return err
		}
		subs[i] = &sub{cookie: c, id: c[:22], first: make(chan struct{})}
		return nil
	}); err != nil {
		return err
	}

	settle()
	rss0, mem0 := rss(o.edgePID), goMem(o.edgeOps)

	fmt.Printf("opening %d SSE streams…\n", o.n)
	t0 := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var broken atomic.Int64
	var wg sync.WaitGroup
	if err := forEach(o.n, o.openConc, func(i int) error {
		conn, br, err := openStream(u.Host, subs[i].cookie)
		if err != nil {
			return fmt.Errorf("stream %d: %w", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := readStream(ctx, conn, br, subs[i]); err != nil && ctx.Err() == nil {
				broken.Add(1)
			}
		}()
		return nil
	}); err != nil {
		return err
	}
	for _, s := range subs {
		<-s.first
	}
	fmt.Printf("%d streams open with their first message in %s\n", o.n, time.Since(t0).Round(time.Millisecond))

	settle()
	rss1, mem1 := rss(o.edgePID), goMem(o.edgeOps)
	if rss0 > 0 && rss1 > 0 {
		fmt.Printf("edge resident set: %.1f MiB before, %.1f MiB with %d streams: %.2f KB per connection\n",
			mib(rss0), mib(rss1), o.n, float64(rss1-rss0)/float64(o.n)/1024)
	}
	if mem0 > 0 && mem1 > 0 {
		fmt.Printf("edge Go heap in use + stacks: %.1f MiB before, %.1f MiB with %d streams: %.2f KB per connection\n",
			mib(mem0), mib(mem1), o.n, float64(mem1-mem0)/float64(o.n)/1024)
	}

	hist0 := map[string]hist{
		"origin ingest→delta": scrapeHist(o.origin+"/metrics", "segedge_origin_ingest_to_delta_seconds"),
		"event→edge replica":  scrapeHist(o.edgeOps+"/metrics", "segedge_edge_event_to_replica_seconds"),
	}
	fmt.Printf("sending %d events (one add_to_cart per visitor) at %d/s…\n", o.events, o.rate)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: o.senders}}
	work := make(chan *sub)
	var sendErrs atomic.Int64
	var swg sync.WaitGroup
	for range o.senders {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for s := range work {
				if err := sendEvent(client, o, s); err != nil {
					sendErrs.Add(1)
					fmt.Fprintln(os.Stderr, "send:", err)
				}
			}
		}()
	}
	tick := time.NewTicker(time.Second / time.Duration(o.rate))
	for i := range o.events {
		<-tick.C
		work <- subs[i]
	}
	tick.Stop()
	close(work)
	swg.Wait()

	deadline := time.Now().Add(o.timeout)
	var lat []time.Duration
	for {
		lat = lat[:0]
		for _, s := range subs[:o.events] {
			if l := s.latency.Load(); l > 0 {
				lat = append(lat, time.Duration(l))
			}
		}
		if len(lat) == o.events || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nobody else got a message: the subscribers without an event never saw a second state.
	var strays int
	for _, s := range subs[o.events:] {
		if s.latency.Load() != 0 {
			strays++
		}
	}
	cancel()
	slices.Sort(lat)
	fmt.Printf("event → subscriber over %d of %d events: p50 %s, p99 %s, max %s (send errors %d, broken streams %d, messages to visitors without an event %d)\n",
		len(lat), o.events, q(lat, 0.50), q(lat, 0.99), q(lat, 1), sendErrs.Load(), broken.Load(), strays)
	for _, k := range []string{"origin ingest→delta", "event→edge replica"} {
		url, name := o.origin+"/metrics", "segedge_origin_ingest_to_delta_seconds"
		if k == "event→edge replica" {
			url, name = o.edgeOps+"/metrics", "segedge_edge_event_to_replica_seconds"
		}
		d := scrapeHist(url, name).minus(hist0[k])
		fmt.Printf("  of which %s (from the accepted_at the origin stamps; its own histogram, interpolated in buckets): p50 %s, p99 %s over %d\n",
			k, d.quantile(0.5), d.quantile(0.99), int(d.count()))
	}
	if len(lat) < o.events || sendErrs.Load() > 0 || broken.Load() > 0 || strays > 0 {
		return errors.New("not every event reached exactly its own subscriber")
	}
	return nil
}

func q(d []time.Duration, p float64) string {
	if len(d) == 0 {
		return "-"
	}
	i := min(len(d)-1, int(p*float64(len(d))))
	return d[i].Round(10 * time.Microsecond).String()
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// settle gives the edge time to finish what it was doing (and the runtime to collect).
func settle() { time.Sleep(3 * time.Second) }

// forEach runs f(0..n-1) with conc at once and returns the first error.
func forEach(n, conc int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func visitorCookie(edge string) (string, error) {
	res, err := http.Get(edge + "/user/segments")
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	for _, c := range res.Cookies() {
		if c.Name == "segedge_uid" && len(c.Value) > 22 {
			return c.Value, nil
		}
	}
	return "", fmt.Errorf("GET /user/segments: %d without a visitor cookie", res.StatusCode)
}

// openStream opens one SSE stream on its own connection and returns it after the response
// headers. A plain connection (not http.Transport) keeps this program's own memory small.
func openStream(host, cookie string) (net.Conn, *bufio.Reader, error) {
	conn, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(conn, "GET /user/segments/stream HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCookie: segedge_uid=%s\r\n\r\n", host, cookie)
	br := bufio.NewReaderSize(conn, 1024)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if !strings.HasPrefix(line, "HTTP/1.1 200") {
		conn.Close()
		return nil, nil, fmt.Errorf("status %q", strings.TrimSpace(line))
	}
	for { // headers
		line, err := br.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		if line == "\r\n" {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, br, nil
}

// readStream reads SSE events (the body is chunked; each event ends with a blank line inside
// one chunk, so scanning lines for "data: " is enough) until ctx is done.
func readStream(ctx context.Context, conn net.Conn, br *bufio.Reader, s *sub) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	firstSeen := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if !firstSeen {
				close(s.first)
			}
			return err
		}
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		now := time.Now().UnixNano()
		var m struct {
			Version uint64 `json:"version"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("bad data %q: %w", data, err)
		}
		if !firstSeen {
			firstSeen = true
			close(s.first)
			if m.Version == 0 {
				continue
			}
		}
		if sent := s.sentAt.Load(); sent > 0 && s.latency.Load() == 0 {
			s.latency.Store(now - sent)
		} else if sent == 0 {
			s.latency.Store(-1) // a state this visitor did not cause
		}
	}
}

func sendEvent(c *http.Client, o options, s *sub) error {
	body := fmt.Sprintf(`[{"event_id":"sse-%s","user_id":%q,"type":"add_to_cart"}]`, s.id, s.id)
	req, _ := http.NewRequest("POST", o.origin+"/v1/events", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+o.writeKey)
	s.sentAt.Store(time.Now().UnixNano())
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 202 {
		return fmt.Errorf("POST /v1/events: %d %s", res.StatusCode, b)
	}
	return nil
}

// rss is the resident set of pid in bytes, 0 when unknown.
func rss(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// goMem is the edge's Go heap in use plus goroutine stacks, from its /metrics; 0 when unknown.
func goMem(ops string) int64 {
	res, err := http.Get(ops + "/metrics")
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	var total float64
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes "} {
			if v, ok := strings.CutPrefix(sc.Text(), name); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
	}
	return int64(total)
}

// hist is a Prometheus histogram's cumulative buckets: upper bound → count.
type hist struct {
	le  []float64
	cum []float64
}

func scrapeHist(url, name string) hist {
	var h hist
	res, err := http.Get(url)
	if err != nil {
		return h
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prefix := name + `_bucket{le="`
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		bound, count, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		le, err1 := strconv.ParseFloat(bound, 64)
		if bound == "+Inf" {
			le, err1 = math.Inf(1), nil
		}
		n, err2 := strconv.ParseFloat(count, 64)
		if err1 == nil && err2 == nil {
			h.le, h.cum = append(h.le, le), append(h.cum, n)
		}
	}
	return h
}

func (h hist) minus(o hist) hist {
	d := hist{le: h.le, cum: slices.Clone(h.cum)}
	if len(o.cum) == len(h.cum) {
		for i := range d.cum {
			d.cum[i] -= o.cum[i]
		}
	}
	return d
}

func (h hist) count() float64 {
	if len(h.cum) == 0 {
		return 0
	}
	return h.cum[len(h.cum)-1]
}

// quantile interpolates linearly inside the bucket that holds it, as Prometheus does.
func (h hist) quantile(q float64) string {
	total := h.count()
	if total == 0 {
		return "-"
	}
	rank := q * total
	lo, below := 0.0, 0.0
	for i, le := range h.le {
		if h.cum[i] >= rank {
			if math.IsInf(le, 1) {
				return fmt.Sprintf("> %s", time.Duration(lo*float64(time.Second)))
			}
			in := h.cum[i] - below
			v := lo + (le-lo)*(rank-below)/max(in, 1)
			return time.Duration(v * float64(time.Second)).Round(10 * time.Microsecond).String()
		}
		lo, below = le, h.cum[i]
	}
	return "-"
}
