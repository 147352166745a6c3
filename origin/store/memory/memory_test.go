package memory

import (
	"context"
	"testing"
	"time"

	"github.com/segedge/segedge/core/event"

	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts store.Options) store.Store {
		s := New(opts)
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func BenchmarkApply(b *testing.B) {
	storetest.BenchmarkApply(b, New(store.Options{}), 1)
}

func TestReturnedProfilesNeverChangeUnderTheCaller(t *testing.T) {
	s := New(store.Options{})
	ctx := context.Background()
	first, _, err := s.Apply(ctx, event.Event{ID: "1", UserID: "u", Type: "a", TS: time.Now()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(ctx, "u")
	if _, _, err := s.Apply(ctx, event.Event{ID: "2", UserID: "u", Type: "a", TS: time.Now()}, nil); err != nil {
		t.Fatal(err)
	}
	if first.Version != 1 || got.Version != 1 {
		t.Errorf("profiles handed out changed: versions %d and %d, want 1", first.Version, got.Version)
	}
	if now, _ := s.Get(ctx, "u"); now.Version != 2 {
		t.Errorf("current version %d, want 2", now.Version)
	}
}
