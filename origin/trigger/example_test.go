package trigger_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/segedge/segedge/origin/trigger"
)

// A webhook receiver checks the signature over the raw body before trusting the firing, and
// dedupes by the delivery id.
func ExampleVerify() {
	secret := []byte("shared-with-segedge")
	seen := map[string]bool{}
	receiver := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		if err := trigger.Verify(secret, r.Header.Get(trigger.SignatureHeader), body, 5*time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		id := r.Header.Get(trigger.DeliveryHeader)
		if seen[id] {
			return // a redelivery: already handled
		}
		seen[id] = true
		e, err := trigger.DecodeEvent(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Println("handled", e.Type, e.Data.Trigger, e.Subject)
	})

	body := `{"specversion":"1.0","id":"loyalty_offer/u-42/17","source":"segedge/origin","type":"dev.segedge.trigger.enter","subject":"u-42","time":"2026-11-29T03:30:00Z","datacontenttype":"application/json","data":{"trigger":"loyalty_offer","segment":"high_engagement","user_id":"u-42","version":17,"ruleset":3,"members":["high_engagement"]}}`
	for _, sig := range []string{
		trigger.Sign(secret, time.Now(), []byte(body)),
		trigger.Sign([]byte("guessed"), time.Now(), []byte(body)),
		trigger.Sign(secret, time.Now(), []byte(body)), // the same firing delivered again
	} {
		req := httptest.NewRequest(http.MethodPost, "/hook", strings.NewReader(body))
		req.Header.Set(trigger.SignatureHeader, sig)
		req.Header.Set(trigger.DeliveryHeader, "loyalty_offer/u-42/17")
		rec := httptest.NewRecorder()
		receiver.ServeHTTP(rec, req)
		fmt.Println(rec.Code)
	}
	// Output:
	// handled dev.segedge.trigger.enter loyalty_offer u-42
	// 200
	// 401
	// 200
}
