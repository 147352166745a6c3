package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// failing is a store whose every operation fails, as a Redis outage would.
type failing struct{ store.Store }

var errDown = errors.New("redis down")

func (failing) Apply(context.Context, event.Event, *profile.Spec) (*profile.Profile, bool, error) {
	return nil, false, errDown
}
func (failing) Get(context.Context, string) (*profile.Profile, error) { return nil, errDown }

func TestInstrumentCountsErrorsAndApplyDurations(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := store.NewMetrics(reg)
	ctx := context.Background()
	ok := store.Instrument(memory.New(store.Options{}), m)
	ev := event.Event{ID: "e", UserID: "u", Type: "page_view", TS: time.Now()}
	if _, _, err := ok.Apply(ctx, ev, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ok.Get(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	bad := store.Instrument(failing{}, m)
	if _, _, err := bad.Apply(ctx, ev, nil); !errors.Is(err, errDown) {
		t.Fatal(err)
	}
	if _, err := bad.Get(ctx, "u"); !errors.Is(err, errDown) {
		t.Fatal(err)
	}
	want := `
# HELP segedge_origin_store_errors_total Profile store operations that failed (not counting profiles not found), by operation.
# TYPE segedge_origin_store_errors_total counter
segedge_origin_store_errors_total{op="apply"} 1
segedge_origin_store_errors_total{op="delete"} 0
segedge_origin_store_errors_total{op="get"} 1
segedge_origin_store_errors_total{op="scan"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "segedge_origin_store_errors_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "segedge_origin_store_apply_duration_seconds"); n != 1 {
		t.Errorf("apply duration histogram: %d series", n)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "segedge_origin_store_apply_duration_seconds" {
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 2 {
				t.Errorf("apply durations observed %d times, want 2 (one success, one failure)", c)
			}
		}
	}
}
