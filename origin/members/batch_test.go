package members

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

func batchConformance(t *testing.T, s interface {
	Store
	Batcher
}) {
	ctx := context.Background()
	users := []string{"a", "b", "c"}
	put := []Record{{Version: 1, Members: []string{"x"}}, {Version: 7, Members: []string{}, Thresholds: []string{"big_spender"}}, {Version: 2}}
	if err := s.PutMany(ctx, users[:2], put[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.PutMany(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetMany(ctx, users)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Version != 1 || !slices.Equal(got[0].Members, []string{"x"}) ||
		got[1].Version != 7 || !slices.Equal(got[1].Thresholds, []string{"big_spender"}) || got[2].Version != 0 {
		t.Fatalf("GetMany = %+v", got)
	}
	if one, _ := s.Get(ctx, "b"); one.Version != 7 || !slices.Equal(one.Thresholds, []string{"big_spender"}) {
		t.Fatalf("Get after PutMany = %+v", one)
	}
	if empty, err := s.GetMany(ctx, nil); err != nil || len(empty) != 0 {
		t.Fatalf("GetMany(nil) = %v, %v", empty, err)
	}
}

func TestMemoryBatch(t *testing.T) { batchConformance(t, NewMemory()) }

func TestRedisBatch(t *testing.T) {
	r := testenv.StartRedis(t)
	batchConformance(t, NewRedis(r.Client, r.Prefix, time.Hour))
}
