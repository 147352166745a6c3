package server

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/purge"
)

// postInvalidate is POST /v1/invalidate: purge URLs, prefixes or surrogate keys on every edge.
// The purge is stored in the INVALIDATE stream before the 202, so an edge that is reconnecting
// applies it too.
func (o *origin) postInvalidate(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		httpError(w, http.StatusRequestEntityTooLarge, "body over 1 MiB")
		return
	}
	req, err := purge.Decode(body)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	req.ID = nats.NewInbox()[7:] // a unique id, for logs and dedup
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	msg := &nats.Msg{Subject: o.topo.InvalidateSubject(), Data: req.Encode(), Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, req.ID)
	if _, err := o.js.PublishMsg(ctx, msg); err != nil {
		httpError(w, http.StatusServiceUnavailable, "purge not stored: "+err.Error())
		return
	}
	o.log.Info("purge published", ops.RequestAttr(r.Context()), "id", req.ID, "urls", len(req.URLs), "prefixes", len(req.Prefixes), "tags", len(req.Tags))
	writeJSON(w, http.StatusAccepted, map[string]any{"id": req.ID, "urls": len(req.URLs), "prefixes": len(req.Prefixes), "tags": len(req.Tags)})
}
