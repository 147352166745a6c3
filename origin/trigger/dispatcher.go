package trigger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/bus"
)

// DispatcherConfig configures a Dispatcher. Zero values take the defaults noted.
type DispatcherConfig struct {
	JS       jetstream.JetStream // required
	Topology bus.Topology
	// Secret signs every delivery (X-Segedge-Signature). Required: an unsigned webhook could be
	// forged by anyone who learns the URL.
	Secret []byte
	// Durable is the consumer name on TRIGGERS, shared by every origin of one installation so
	// each firing is delivered by one of them (default "webhooks").
	Durable string
	// AllowHosts are webhook hosts allowed although they are (or resolve to) loopback, private,
	// link-local, multicast or unspecified addresses: "127.0.0.1", "hooks.internal", "*.corp.example".
	AllowHosts []string
	// Timeout bounds each HTTP call, connect to last byte (default 5s).
	Timeout time.Duration
	// BackoffBase and BackoffMax shape the retry delay: base·2^(attempt-1), capped at max, with
	// jitter in [d/2, d) (defaults 1s and 5m).
	BackoffBase, BackoffMax time.Duration
	// MaxAttempts is how many deliveries are tried before a firing is dead-lettered (default 8).
	MaxAttempts int
	// Concurrency is how many deliveries run at once in this process (default 8).
	Concurrency int
	// MaxResponseBytes caps how much of a response body is read (default 64 KiB); the rest is
	// discarded with the connection.
	MaxResponseBytes int64
	// Registerer, if set, gets segedge_origin_webhook_deliveries_total and
	// segedge_origin_webhook_duration_seconds.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Now is the clock for signature timestamps (default time.Now).
	Now func() time.Time
}

// Delivery results, the values of the result label.
const (
	ResultOK         = "ok"
	ResultRetry      = "retry"
	ResultDeadLetter = "dead_letter"
	ResultRefused    = "refused"
)

// Dispatcher delivers firings from TRIGGERS to their webhooks.
type Dispatcher struct {
	cfg        DispatcherConfig
	client     *http.Client
	deliveries *prometheus.CounterVec
	duration   prometheus.Histogram
}

// NewDispatcher checks cfg and registers the metrics. Run starts it.
func NewDispatcher(cfg DispatcherConfig) (*Dispatcher, error) {
	if cfg.JS == nil {
		return nil, errors.New("webhook dispatcher: JS is required")
	}
	if len(cfg.Secret) == 0 {
		return nil, errors.New("webhook dispatcher: a signing secret is required")
	}
	if cfg.Durable == "" {
		cfg.Durable = "webhooks"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 5 * time.Minute
	}
	if cfg.BackoffMax < cfg.BackoffBase {
		cfg.BackoffMax = cfg.BackoffBase
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 64 << 10
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Dispatcher{
		cfg: cfg,
		client: &http.Client{
			Timeout: cfg.Timeout,
			Transport: &http.Transport{
				Proxy:                 nil, // a proxy would connect for us, past the address guard
				DialContext:           GuardedDialer(cfg.AllowHosts, cfg.Timeout),
				TLSHandshakeTimeout:   cfg.Timeout,
				ResponseHeaderTimeout: cfg.Timeout,
				MaxIdleConnsPerHost:   cfg.Concurrency,
				IdleConnTimeout:       90 * time.Second,
				ForceAttemptHTTP2:     true,
			},
			// A redirect is not followed: it could point anywhere, and the receiver's answer to
			// this delivery is the redirect itself, which counts as a failure.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segedge_origin_webhook_deliveries_total",
			Help: "Webhook delivery attempts by result: ok, retry, dead_letter (attempts exhausted or unreadable), refused (forbidden target).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "segedge_origin_webhook_duration_seconds",
			Help:    "Time of one webhook HTTP call, connect to response read.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12), // 5ms .. ~10s
		}),
	}
	for _, r := range []string{ResultOK, ResultRetry, ResultDeadLetter, ResultRefused} {
		d.deliveries.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{d.deliveries, d.duration} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("webhook dispatcher: register metrics: %w", err)
			}
		}
	}
	return d, nil
}

// Run creates the streams and the durable consumer and delivers firings until ctx is done. It
// then stops fetching, lets deliveries in flight finish (each is bounded by Timeout) and returns
// nil. Firings not yet acknowledged stay in the consumer for the next Run, here or on another
// origin.
func (d *Dispatcher) Run(ctx context.Context) error {
	if err := EnsureStreams(ctx, d.cfg.JS, d.cfg.Topology, StreamOptions{}); err != nil {
		return fmt.Errorf("webhook dispatcher: %w", err)
	}
	cons, err := d.cfg.JS.CreateOrUpdateConsumer(ctx, streamName(d.cfg.Topology.Prefix), jetstream.ConsumerConfig{
		Durable:       d.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// A delivery holds its message for at most Timeout plus a dead-letter publish; after
		// AckWait a crashed origin's firings go to another one.
		AckWait:       d.cfg.Timeout + 30*time.Second,
		MaxDeliver:    -1, // attempts are counted here, so the last one is dead-lettered, not dropped
		MaxAckPending: 1000,
	})
	if err != nil {
		return fmt.Errorf("webhook dispatcher: consumer %s: %w", d.cfg.Durable, err)
	}
	// Deliveries get their own context: on shutdown they finish (bounded by Timeout) rather than
	// being cut off, so a receiver is not left with a half-made call we then retry.
	work := context.WithoutCancel(ctx)
	sem := make(chan struct{}, d.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	// Fetch only as many firings as there are free workers, so nothing sits in a client-side
	// buffer: on shutdown every firing not being delivered is still free for another origin.
	for {
		sem <- struct{}{}
		free := 1
		for free < d.cfg.Concurrency {
			select {
			case sem <- struct{}{}:
				free++
				continue
			default:
			}
			break
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := cons.Fetch(free, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			for range free {
				<-sem
			}
			if ctx.Err() != nil {
				return nil
			}
			d.cfg.Log.Warn("fetch trigger firings", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				d.handle(work, msg)
			}()
		}
		cancel()
		for range free - got {
			<-sem
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && !errors.Is(err, nats.ErrTimeout) {
			d.cfg.Log.Warn("fetch trigger firings", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	}
}

// handle delivers one firing and acknowledges, retries or dead-letters it.
func (d *Dispatcher) handle(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		d.cfg.Log.Error("trigger firing without metadata; left for redelivery", "err", err)
		return
	}
	attempt := int(meta.NumDelivered)
	name := msg.Headers().Get(HeaderTrigger)
	id := msg.Headers().Get(jetstream.MsgIDHeader)
	webhook := msg.Headers().Get(HeaderWebhook)
	log := d.cfg.Log.With("trigger", name, "attempt", attempt)

	if name == "" || id == "" || webhook == "" {
		d.deadLetter(ctx, msg, name, attempt, ResultDeadLetter, errors.New("firing lacks trigger, id or webhook header"), log)
		return
	}
	if err := ValidateWebhook(webhook, d.cfg.AllowHosts); err != nil {
		d.deadLetter(ctx, msg, name, attempt, ResultRefused, err, log)
		return
	}
	err = d.post(ctx, webhook, id, msg.Data())
	switch {
	case err == nil:
		d.deliveries.WithLabelValues(ResultOK).Inc()
		if err := msg.Ack(); err != nil {
			// The receiver has it; a redelivery is possible and deduped by id at the receiver.
			log.Warn("ack delivered trigger firing", "err", err)
		}
	case errors.Is(err, ErrRefusedTarget):
		d.deadLetter(ctx, msg, name, attempt, ResultRefused, err, log)
	case attempt >= d.cfg.MaxAttempts:
		d.deadLetter(ctx, msg, name, attempt, ResultDeadLetter, err, log)
	default:
		d.deliveries.WithLabelValues(ResultRetry).Inc()
		delay := d.backoff(attempt)
		log.Info("webhook delivery failed; retrying", "err", err, "in", delay)
		if err := msg.NakWithDelay(delay); err != nil {
			log.Warn("nak trigger firing; it is redelivered after the ack wait", "err", err)
		}
	}
}

// backoff returns the delay before attempt+1: base·2^(attempt-1) capped at max, jittered into
// [d/2, d) so receivers that failed together are not retried in lockstep.
func (d *Dispatcher) backoff(attempt int) time.Duration {
	delay := d.cfg.BackoffMax
	if attempt < 1 {
		attempt = 1
	}
	if attempt <= 40 {
		if x := d.cfg.BackoffBase << (attempt - 1); x > 0 && x < delay {
			delay = x
		}
	}
	half := delay / 2
	return half + rand.N(delay-half+1)
}

// post makes one signed webhook call. Any non-2xx answer is an error.
func (d *Dispatcher) post(ctx context.Context, url, id string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefusedTarget, err)
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("User-Agent", "segedge-webhooks/1")
	req.Header.Set(DeliveryHeader, id)
	req.Header.Set(SignatureHeader, Sign(d.cfg.Secret, d.cfg.Now(), body))
	start := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		d.duration.Observe(time.Since(start).Seconds())
		return fmt.Errorf("post webhook: %w", err)
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, d.cfg.MaxResponseBytes))
	resp.Body.Close()
	d.duration.Observe(time.Since(start).Seconds())
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if len(snippet) > 200 {
			snippet = snippet[:200]
		}
		return fmt.Errorf("post webhook: %s: %s", resp.Status, strings.TrimSpace(strings.ToValidUTF8(string(snippet), "?")))
	}
	return nil
}

// deadLetter moves a firing to TRIGGERS_DLQ with the reason and terminates it on TRIGGERS. If
// the dead-letter publish fails the firing is left to be redelivered, so it is never lost.
func (d *Dispatcher) deadLetter(ctx context.Context, msg jetstream.Msg, name string, attempt int, result string, cause error, log *slog.Logger) {
	if name == "" || !nameRE.MatchString(name) {
		name = "unknown"
	}
	reason := cause.Error()
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	out := &nats.Msg{Subject: dlqSubject(d.cfg.Topology.Prefix, name), Data: msg.Data(), Header: nats.Header{}}
	for k, v := range msg.Headers() {
		out.Header[k] = v
	}
	out.Header.Set(HeaderError, reason)
	out.Header.Set(HeaderAttempts, strconv.Itoa(attempt))
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d.cfg.JS.PublishMsg(pctx, out); err != nil {
		log.Error("dead-letter trigger firing; it stays on TRIGGERS", "err", err, "reason", reason)
		if err := msg.NakWithDelay(d.backoff(attempt)); err != nil {
			log.Warn("nak trigger firing", "err", err)
		}
		return
	}
	d.deliveries.WithLabelValues(result).Inc()
	log.Warn("trigger firing dead-lettered", "result", result, "reason", reason)
	if err := msg.Term(); err != nil {
		log.Warn("terminate dead-lettered trigger firing", "err", err)
	}
}
