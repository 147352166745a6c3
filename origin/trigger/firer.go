package trigger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/bus"
	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/rules"
)

// Message headers of a firing on TRIGGERS (beside Nats-Msg-Id). The webhook travels with the
// firing, so a firing is delivered to the URL its trigger had when it fired, by whichever origin
// consumes it, even if that origin has not yet swapped to the same ruleset.
const (
	HeaderTrigger = "Segedge-Trigger"
	HeaderWebhook = "Segedge-Webhook"
	// HeaderError and HeaderAttempts are set on dead-lettered firings.
	HeaderError    = "Segedge-Error"
	HeaderAttempts = "Segedge-Attempts"
)

// StreamOptions size TRIGGERS and TRIGGERS_DLQ. Zero values take the defaults noted.
type StreamOptions struct {
	Replicas  int                   // 1
	MaxAge    time.Duration         // 7 days
	Storage   jetstream.StorageType // file
	Duplicate time.Duration         // duplicate window on Nats-Msg-Id: 2 minutes
}

// EnsureStreams creates TRIGGERS (subjects <prefix>seg.triggers.*) and TRIGGERS_DLQ (subjects
// <prefix>seg.triggers_dlq.*), or updates them to this configuration.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, t bus.Topology, o StreamOptions) error {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.MaxAge == 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	if o.Duplicate == 0 {
		o.Duplicate = 2 * time.Minute
	}
	for _, s := range []struct{ name, subject string }{
		{streamName(t.Prefix), t.TriggerSubject("*")},
		{dlqStreamName(t.Prefix), dlqSubject(t.Prefix, "*")},
	} {
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:       s.name,
			Subjects:   []string{s.subject},
			Storage:    o.Storage,
			Replicas:   o.Replicas,
			MaxAge:     o.MaxAge,
			Duplicates: o.Duplicate,
			Retention:  jetstream.LimitsPolicy,
		})
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", s.name, err)
		}
	}
	return nil
}

// FirerConfig configures a Firer.
type FirerConfig struct {
	JS       jetstream.JetStream // required
	Topology bus.Topology
	// AllowHosts are webhook hosts allowed even though they resolve to a forbidden network
	// (see ValidateWebhook). SetTriggers validates webhooks with them.
	AllowHosts []string
	// PublishTimeout bounds waiting for JetStream's acks in Fire (default 5s).
	PublishTimeout time.Duration
	// Registerer, if set, gets segedge_origin_triggers_fired_total.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Now is the clock for the event time of deltas without AcceptedAt (default time.Now).
	Now func() time.Time
}

// Firer turns deltas into firings on TRIGGERS. It implements the engine's TriggerSink.
type Firer struct {
	cfg      FirerConfig
	triggers atomic.Pointer[set]
	fired    *prometheus.CounterVec
}

// set is an immutable trigger set, indexed by segment so Fire costs nothing per trigger that
// does not watch the segments a delta touched.
type set struct {
	list        []Trigger
	enter, exit map[string][]Trigger
	byName      map[string]Trigger
	th          *thresholds // nil: no threshold triggers
}

func newSet(ts []Trigger, th *thresholds) *set {
	s := &set{list: slices.Clone(ts), enter: map[string][]Trigger{}, exit: map[string][]Trigger{}, byName: map[string]Trigger{}, th: th}
	for _, t := range s.list {
		s.byName[t.Name] = t
		switch t.On {
		case Enter:
			s.enter[t.Segment] = append(s.enter[t.Segment], t)
		case Exit:
			s.exit[t.Segment] = append(s.exit[t.Segment], t)
		}
	}
	return s
}

// NewFirer checks cfg, registers the metric and creates the streams. It starts with no
// triggers; call SetTriggers with the active ruleset's.
func NewFirer(ctx context.Context, cfg FirerConfig) (*Firer, error) {
	if cfg.JS == nil {
		return nil, errors.New("trigger firer: JS is required")
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Firer{cfg: cfg, fired: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "segedge_origin_triggers_fired_total",
		Help: "Trigger firings stored in TRIGGERS (redeliveries JetStream dropped as duplicates not counted), by trigger.",
	}, []string{"trigger"})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(f.fired); err != nil {
			return nil, fmt.Errorf("trigger firer: register metrics: %w", err)
		}
	}
	f.triggers.Store(newSet(nil, nil))
	if err := EnsureStreams(ctx, cfg.JS, cfg.Topology, StreamOptions{}); err != nil {
		return nil, fmt.Errorf("trigger firer: %w", err)
	}
	return f, nil
}

// SetTriggers validates ts and swaps them in atomically: a Fire running concurrently sees either
// the old set or the new one, never a mix. On error the old set stays. Threshold triggers need
// the rules file they belong to: set those with SetRulesFile.
func (f *Firer) SetTriggers(ts []Trigger) error {
	return f.setTriggers(ts, nil)
}

func (f *Firer) setTriggers(ts []Trigger, file *rules.File) error {
	if err := ValidateTriggers(ts, f.cfg.AllowHosts); err != nil {
		return err
	}
	var th *thresholds
	if slices.ContainsFunc(ts, func(t Trigger) bool { return t.On == Threshold }) {
		if file == nil {
			return errors.New("threshold triggers need their rules file: use SetRulesFile")
		}
		var err error
		if th, err = compileThresholds(file, ts); err != nil {
			return err
		}
	}
	f.triggers.Store(newSet(ts, th))
	for _, t := range ts {
		f.fired.WithLabelValues(t.Name) // a series from the start, so rate() and alerts see the first firing
	}
	return nil
}

// Triggers returns the current set.
func (f *Firer) Triggers() []Trigger { return slices.Clone(f.triggers.Load().list) }

// Fire publishes a firing for every trigger whose segment d entered (Enter) or exited (Exit) and
// waits for JetStream to store them all. Erasure deltas fire nothing. Fire returns an error if
// any firing was not stored, so the engine leaves the event unacknowledged and a redelivery
// fires again; firings that were stored are then dropped as duplicates by their stable id.
func (f *Firer) Fire(ctx context.Context, d *delta.Delta) error {
	if d == nil || d.Erased || (len(d.Entered) == 0 && len(d.Exited) == 0) {
		return nil
	}
	s := f.triggers.Load()
	var futs []pending
	publish := func(segs []string, index map[string][]Trigger) error {
		for _, seg := range segs {
			for _, t := range index[seg] {
				msg, err := f.message(t, d)
				if err != nil {
					return fmt.Errorf("fire trigger %q: %w", t.Name, err)
				}
				fut, err := f.cfg.JS.PublishMsgAsync(msg)
				if err != nil {
					return fmt.Errorf("fire trigger %q: publish: %w", t.Name, err)
				}
				futs = append(futs, pending{t.Name, fut})
			}
		}
		return nil
	}
	if err := publish(d.Entered, s.enter); err != nil {
		return err
	}
	if err := publish(d.Exited, s.exit); err != nil {
		return err
	}
	return f.await(ctx, futs)
}

// message builds the TRIGGERS message of one firing.
func (f *Firer) message(t Trigger, d *delta.Delta) (*nats.Msg, error) {
	id := FiringID(t.Name, d.UserID, d.Version)
	typ := TypeEnter
	switch t.On {
	case Exit:
		typ = TypeExit
	case Threshold:
		typ = TypeThreshold
	}
	// The event time is when the causing event was accepted, so a redelivery builds the same body.
	at := f.cfg.Now()
	if d.AcceptedAt > 0 {
		at = time.UnixMilli(d.AcceptedAt)
	}
	members := d.Members
	if members == nil {
		members = []string{}
	}
	body, err := json.Marshal(Event{
		SpecVersion:     "1.0",
		ID:              id,
		Source:          Source,
		Type:            typ,
		Subject:         d.UserID,
		Time:            at.UTC(),
		DataContentType: "application/json",
		Data: EventData{
			Trigger: t.Name, Segment: t.Segment, Condition: t.Expr, UserID: d.UserID,
			Version: d.Version, Ruleset: d.Ruleset, Members: members,
		},
	})
	if err != nil {
		return nil, err
	}
	msg := &nats.Msg{Subject: f.cfg.Topology.TriggerSubject(t.Name), Data: body, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set(HeaderTrigger, t.Name)
	msg.Header.Set(HeaderWebhook, t.Webhook)
	return msg, nil
}
