package schedule

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

func batchConformance(t *testing.T, s interface {
	Schedule
	Batcher
}) {
	ctx := context.Background()
	t0 := time.Unix(1_800_000_000, 0)
	if err := s.At(ctx, 3, "a", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// a: later than recorded, stays at +1m; b: new at +2m; c: new at +10m.
	if err := s.AtMany(ctx, 3, []string{"a", "b", "c"}, []time.Time{t0.Add(5 * time.Minute), t0.Add(2 * time.Minute), t0.Add(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AtMany(ctx, 3, nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		at   time.Duration
		want []string
	}{{time.Minute, []string{"a"}}, {3 * time.Minute, []string{"b"}}, {9 * time.Minute, nil}, {10 * time.Minute, []string{"c"}}} {
		taken, err := s.Due(ctx, 3, t0.Add(tt.at), 10)
		if err != nil {
			t.Fatal(err)
		}
		got := usersOf(taken)
		if !slices.Equal(got, tt.want) {
			t.Errorf("Due(+%s) = %v, want %v", tt.at, got, tt.want)
		}
		if err := s.Done(ctx, 3, got...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMemoryAtMany(t *testing.T) { batchConformance(t, NewMemory()) }

func TestRedisAtMany(t *testing.T) {
	r := testenv.StartRedis(t)
	batchConformance(t, NewRedis(r.Client, r.Prefix))
}
