// Package bus holds what origin and edge agree on about NATS: the stream and subject names,
// connecting with timeouts and logged reconnects, creating the streams, and the embedded NATS
// server that the origin starts when no NATS_URL is given.
//
// Every name goes through a Topology so that several test runs (or several segedge
// installations) can share one NATS server: a prefix is put in front of every stream and subject.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultPartitions is how many partitions EVENTS and DELTAS are split into when not configured.
// A user's events always go to the same partition (core/event.Partition), so they stay ordered.
const DefaultPartitions = 8

// Topology names the streams and subjects of one segedge installation.
type Topology struct {
	// Prefix goes in front of every stream name (upper case) and subject (lower case). Empty in
	// production; tests use a random one.
	Prefix string
	// Partitions of EVENTS and DELTAS.
	Partitions int
}

func (t Topology) stream(name string) string { return strings.ToUpper(t.Prefix) + name }
func (t Topology) subject(s string) string   { return strings.ToLower(t.Prefix) + s }

// EventsStream is the stream of accepted events.
func (t Topology) EventsStream() string { return t.stream("EVENTS") }

// EventsDLQStream keeps events the origin's store refused on every delivery (see
// EventsDLQSubject), so an operator can inspect and replay them instead of losing them.
func (t Topology) EventsDLQStream() string { return t.stream("EVENTS_DLQ") }

// EventsDLQSubject is where a partition's dead-lettered events go (outside seg.events.*, so
// the origin never consumes them by accident).
func (t Topology) EventsDLQSubject(partition int) string {
	return t.subject("seg.dlq.events.") + strconv.Itoa(partition)
}

// DeltasStream is the stream of segment-membership changes.
func (t Topology) DeltasStream() string { return t.stream("DELTAS") }

// EventSubject is the subject of one partition of EVENTS.
func (t Topology) EventSubject(partition int) string {
	return t.subject("seg.events.") + strconv.Itoa(partition)
}

// DeltaSubject is the subject of one partition of DELTAS.
func (t Topology) DeltaSubject(partition int) string {
	return t.subject("seg.deltas.") + strconv.Itoa(partition)
}

// InvalidateSubject carries cache purges from the origin to every edge.
func (t Topology) InvalidateSubject() string { return t.subject("seg.invalidate") }

// InvalidateStream keeps purges for an hour, so an edge that was briefly disconnected still
// applies them.
func (t Topology) InvalidateStream() string { return t.stream("INVALIDATE") }

// TriggerSubject carries the firings of one trigger.
func (t Topology) TriggerSubject(name string) string { return t.subject("seg.triggers.") + name }

// RulesetBucket is the JetStream key-value bucket that holds the current ruleset pointer and history.
func (t Topology) RulesetBucket() string { return t.stream("RULESETS") }

// LeaseBucket is the JetStream key-value bucket through which origin processes share the
// partitions: one key per partition names the origin that consumes it, one key per live origin
// is its heartbeat, and the bucket's TTL makes both expire when their origin stops renewing them.
func (t Topology) LeaseBucket() string { return t.stream("SEG_LEASES") }

// RescanBucket is the JetStream key-value bucket where origins record, per partition, the
// ruleset version whose background rescan completed on it, so that a restart or a partition
// handover rescans only what is not done yet.
func (t Topology) RescanBucket() string { return t.stream("SEG_RESCANS") }

// TaskSubject is where the origin that holds a partition takes work for that partition's users
// from other origins (a re-evaluation or an erasure asked of any origin), so that it runs on
// the partition's worker, in order with the user's events.
func (t Topology) TaskSubject(partition int) string {
	return t.subject("seg.origin.tasks.") + strconv.Itoa(partition)
}

// StreamOptions size the streams. Zero values take the defaults noted.
type StreamOptions struct {
	Replicas  int           // 1
	MaxAge    time.Duration // EVENTS 7 days, DELTAS 1 day
	Storage   jetstream.StorageType
	Duplicate time.Duration // JetStream's own dedup window on Nats-Msg-Id: 2 minutes
}

// EnsureStreams creates EVENTS, DELTAS, INVALIDATE and EVENTS_DLQ, or updates their configuration to this one.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, t Topology, o StreamOptions) error {
	if t.Partitions <= 0 {
		return fmt.Errorf("ensure streams: partitions must be positive, got %d", t.Partitions)
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Duplicate == 0 {
		o.Duplicate = 2 * time.Minute
	}
	for _, s := range []struct {
		name, subjects string
		age            time.Duration
	}{
		{t.EventsStream(), t.subject("seg.events.*"), 7 * 24 * time.Hour},
		{t.DeltasStream(), t.subject("seg.deltas.*"), 24 * time.Hour},
		{t.InvalidateStream(), t.InvalidateSubject(), time.Hour},
		{t.EventsDLQStream(), t.subject("seg.dlq.events.*"), 30 * 24 * time.Hour},
	} {
		age := o.MaxAge
		if age == 0 {
			age = s.age
		}
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:       s.name,
			Subjects:   []string{s.subjects},
			Storage:    o.Storage,
			Replicas:   o.Replicas,
			MaxAge:     age,
			Duplicates: o.Duplicate,
			Retention:  jetstream.LimitsPolicy,
		})
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", s.name, err)
		}
	}
	return nil
}

// Connect dials NATS and waits up to timeout for the first connection. After that the client
// reconnects forever, logging each disconnect and reconnect; Conn.IsConnected tells readiness.
func Connect(ctx context.Context, url, name string, timeout time.Duration, log *slog.Logger) (*nats.Conn, error) {
	deadline := time.Now().Add(timeout)
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(2 * time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: we closed it ourselves
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: no answer within %s", url, timeout)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: %w", url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nc, nil
}

// ErrNotConnected is what readiness checks report while the NATS connection is down.
var ErrNotConnected = errors.New("not connected to NATS")

// Check reports whether nc is connected, for /readyz.
func Check(nc *nats.Conn) error {
	if nc == nil || !nc.IsConnected() {
		return ErrNotConnected
	}
	return nil
}
