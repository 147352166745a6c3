package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/event"
)

// lastAttempt reports whether m has been delivered MaxEventAttempts times: a refusal now sends
// its refused events to EVENTS_DLQ instead of back to the stream.
func (e *Engine) lastAttempt(m jetstream.Msg) bool {
	md, err := m.Metadata()
	return err == nil && md.NumDelivered >= uint64(e.cfg.MaxEventAttempts)
}

// deadLetter moves the events of m that the store refused (refused[i] != nil) to EVENTS_DLQ,
// each message one EVENTS message of them with the reasons in the Segedge-Error header, and
// acknowledges m; its other events were applied. If EVENTS_DLQ does not store them, m is
// redelivered as before: an accepted event is never dropped.
func (e *Engine) deadLetter(ctx context.Context, p int, m jetstream.Msg, evs []event.Event, accepted []time.Time, refused []error) {
	n, err := e.toDLQ(ctx, p, evs, accepted, refused)
	if err != nil {
		e.cfg.Log.Error("refused events not stored in EVENTS_DLQ; redelivering", "partition", p, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	e.m.deadLettered.Add(float64(n))
	// The reasons may name a user: they stay in the message's Segedge-Error header, not the log.
	e.cfg.Log.Error("events refused by the store on every delivery moved to EVENTS_DLQ (reasons in its Segedge-Error header)",
		"partition", p, "events", n, "attempts", e.cfg.MaxEventAttempts)
	_ = m.Ack()
}

// toDLQ publishes the events of evs with a reason in refused (refused[i] != nil) on
// EVENTS_DLQ as one EVENTS message, the reasons in its Segedge-Error header, and returns how
// many it stored.
func (e *Engine) toDLQ(ctx context.Context, p int, evs []event.Event, accepted []time.Time, refused []error) (int, error) {
	var body []byte
	var ids, reasons []string
	for i, err := range refused {
		if err == nil {
			continue
		}
		var encErr error
		if body, encErr = event.AppendWire(body, evs[i], accepted[i]); encErr != nil {
			return 0, fmt.Errorf("encode event %d for EVENTS_DLQ: %w", i, encErr)
		}
		body = append(body, '\n')
		ids = append(ids, evs[i].ID)
		reasons = append(reasons, err.Error())
	}
	msg := &nats.Msg{Subject: e.cfg.Topology.EventsDLQSubject(p), Data: body, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, "dlq-"+event.MessageID(ids))
	msg.Header.Set("Segedge-Error", truncate(strings.NewReplacer("\r", " ", "\n", " ").Replace(strings.Join(reasons, "; ")), 1024))
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := e.cfg.JS.PublishMsg(pctx, msg); err != nil {
		return 0, fmt.Errorf("publish %d events on EVENTS_DLQ: %w", len(ids), err)
	}
	return len(ids), nil
}

// checkDirect checks the events of m, a message a backend published on EVENTS itself (no
// receiver checked its events), as POST /v1/events checks a request's; stored is when
// JetStream stored it. It returns the events that pass. Those that fail go to EVENTS_DLQ with
// their reasons and are counted; ok false: EVENTS_DLQ did not take them, m is redelivered and
// none of its events may be applied now.
func (e *Engine) checkDirect(ctx context.Context, p int, m jetstream.Msg, evs []event.Event, accepted []time.Time, stored time.Time) (keptEvs []event.Event, keptAt []time.Time, ok bool) {
	problems := event.CheckMessage(m.Data(), e.cfg.Limits, stored)
	if len(problems) == 0 {
		return evs, accepted, true
	}
	refused := make([]error, len(evs))
	for _, fe := range problems {
		if fe.Index < len(refused) && refused[fe.Index] == nil {
			refused[fe.Index] = fe
			field := fe.Field
			if field == "" {
				field = "event"
			}
			e.m.directRejected.WithLabelValues(field).Inc()
		}
	}
	moved, err := e.toDLQ(ctx, p, evs, accepted, refused)
	if err != nil {
		e.cfg.Log.Error("events published on EVENTS that fail the ingest's checks not stored in EVENTS_DLQ; redelivering", "partition", p, "err", err)
		_ = m.NakWithDelay(time.Second)
		return nil, nil, false
	}
	// The reasons may name a user: they stay in the DLQ message's Segedge-Error header.
	e.cfg.Log.Warn("events published on EVENTS that fail the ingest's checks moved to EVENTS_DLQ (reasons in its Segedge-Error header)", "partition", p, "events", moved)
	n := 0
	for i := range evs {
		if refused[i] == nil {
			evs[n], accepted[n] = evs[i], accepted[i]
			n++
		}
	}
	return evs[:n], accepted[:n], true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
