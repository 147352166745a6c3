package ops

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRequestIDs(t *testing.T) {
	var seen string
	h := WithRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = RequestAttr(r.Context()).Value.String()
	}))
	for _, tc := range []struct {
		name, sent string
		kept       bool
	}{
		{"none: made up", "", false},
		{"a caller's uuid is kept", "0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"a load balancer's id is kept", "Root=1-67891233-abcdef012345678912345678", false}, // '=' is not allowed
		{"a forged log line is replaced", "x\nlevel=ERROR msg=owned", false},
		{"too long is replaced", string(make([]byte, 65)), false},
		{"short ids are kept", "abc.123:x_y", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			if tc.sent != "" {
				req.Header.Set(RequestIDHeader, tc.sent)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Get(RequestIDHeader)
			if got != seen || got == "" {
				t.Fatalf("response id %q, context id %q", got, seen)
			}
			if tc.kept != (got == tc.sent) {
				t.Fatalf("sent %q, got %q (kept: %v)", tc.sent, got, tc.kept)
			}
			if !ValidRequestID(got) {
				t.Fatalf("id %q is not valid", got)
			}
		})
	}
}
