package ops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
)

// RequestIDHeader carries a request's id: taken from the caller when it sends a valid one (a
// load balancer's or a backend's), made up otherwise, and echoed in the response, so one
// request can be found in the caller's logs and ours.
const RequestIDHeader = "X-Request-Id"

type requestIDKey struct{}

// WithRequestID gives every request an id (see RequestIDHeader), in its context and in the
// response header.
func WithRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !ValidRequestID(id) {
			id = NewRequestID()
		}
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

// NewRequestID returns 16 random hex digits.
func NewRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidRequestID accepts ids of 1 to 64 characters from [A-Za-z0-9._:-]: enough for UUIDs and
// the ids load balancers make, nothing that could forge a log line.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// RequestAttr is the log attribute request_id of the request ctx belongs to (empty when ctx is
// not a request's).
func RequestAttr(ctx context.Context) slog.Attr {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return slog.String("request_id", id)
}
