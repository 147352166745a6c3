package server

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
)

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// httpError answers {"error": msg}.
func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// postEvents is POST /v1/events: a JSON array or NDJSON of events, stored in EVENTS before the 202.
func (o *origin) postEvents(w http.ResponseWriter, r *http.Request) {
	ctx, span := traceIngest(r)
	defer span.End()
	lim := o.limits
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(lim.MaxBodyBytes)+1))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) || len(body) > lim.MaxBodyBytes {
		o.ingest.Reject("too_large", 1)
		httpError(w, http.StatusRequestEntityTooLarge, "request body over the limit of "+itoa(lim.MaxBodyBytes)+" bytes; send smaller batches")
		return
	}
	if err != nil {
		httpError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	code, res := o.ingest.Handle(ctx, body, r.Header.Get("Content-Type"), lim, time.Now())
	traceIngested(span, code, res.Accepted)
	writeJSON(w, code, res)
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
