package server

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"
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
	buf := bodies.Get().(*[]byte)
	defer bodies.Put(buf)
	body, err := readBody((*buf)[:0], http.MaxBytesReader(w, r.Body, int64(lim.MaxBodyBytes)+1), r.ContentLength, lim.MaxBodyBytes)
	*buf = body[:0]
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

// bodies recycles request body buffers: a decoded event keeps no reference into the body
// (strings are copied), so a buffer is free again once the request is answered.
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// readBody reads r to its end into buf, growing it once to the announced length (at most
// limit+1) rather than by doubling from 512 bytes as io.ReadAll does.
func readBody(buf []byte, r io.Reader, announced int64, limit int) ([]byte, error) {
	if announced > 0 {
		buf = slices.Grow(buf, int(min(announced, int64(limit)+1))+1)
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 512)
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
