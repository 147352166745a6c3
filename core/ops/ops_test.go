package ops

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReadyzReportsEachFailingCheck(t *testing.T) {
	var ready Readiness
	ready.Add("nats", func(context.Context) error { return errors.New("not connected to NATS") })
	ready.Add("store", func(context.Context) error { return nil })
	mux := http.NewServeMux()
	Mount(mux, NewRegistry(), &ready)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	res, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 503 || !strings.Contains(string(body), "nats: not connected") || strings.Contains(string(body), "store") {
		t.Fatalf("readyz = %d %q", res.StatusCode, body)
	}

	ready.Add("nats", func(context.Context) error { return nil })
	res, err = http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("readyz = %d after the check passed", res.StatusCode)
	}
	for _, p := range []string{"/healthz", "/metrics"} {
		res, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("%s = %d", p, res.StatusCode)
		}
	}
}

func TestNewLoggerRejectsUnknownFormat(t *testing.T) {
	if _, err := NewLogger(io.Discard, "xml", "info"); err == nil {
		t.Fatal("want an error for format xml")
	}
	if _, err := NewLogger(io.Discard, "json", "loud"); err == nil {
		t.Fatal("want an error for level loud")
	}
}
