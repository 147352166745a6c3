package engine

import (
	"context"
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
	var body []byte
	var ids, reasons []string
	for i, err := range refused {
		if err == nil {
			continue
		}
		var encErr error
		if body, encErr = event.AppendWire(body, evs[i], accepted[i]); encErr != nil {
			e.cfg.Log.Error("refused event not encodable for EVENTS_DLQ; redelivering", "partition", p, "err", encErr)
			_ = m.NakWithDelay(time.Second)
			return
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
		e.cfg.Log.Error("refused events not stored in EVENTS_DLQ; redelivering", "partition", p, "events", len(ids), "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	e.m.deadLettered.Add(float64(len(ids)))
	// The reasons may name a user: they stay in the message's Segedge-Error header, not the log.
	e.cfg.Log.Error("events refused by the store on every delivery moved to EVENTS_DLQ (reasons in its Segedge-Error header)",
		"partition", p, "events", len(ids), "attempts", e.cfg.MaxEventAttempts)
	_ = m.Ack()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
