package members

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

func conformance(t *testing.T, s Store) {
	ctx := context.Background()
	if r, err := s.Get(ctx, "nobody"); err != nil || r.Version != 0 || r.Members != nil {
		t.Fatalf("Get(nobody) = %+v, %v; want the zero record", r, err)
	}
	want := Record{Version: 3, Members: []string{"a", "b"}}
	if err := s.Put(ctx, "u", want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "u")
	if err != nil || got.Version != 3 || !slices.Equal(got.Members, want.Members) {
		t.Fatalf("Get(u) = %+v, %v", got, err)
	}
	if err := s.Delete(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(ctx, "u"); got.Version != 0 {
		t.Fatalf("after Delete: %+v", got)
	}
	if err := s.Count(ctx, []string{"a", "b"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Count(ctx, []string{"a"}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	counts, err := s.Counts(ctx)
	if err != nil || counts["a"] != 2 || counts["b"] != 0 {
		t.Fatalf("Counts = %v, %v; want a:2 b:0", counts, err)
	}
}

func TestMemory(t *testing.T) { conformance(t, NewMemory()) }

func TestRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	conformance(t, NewRedis(r.Client, r.Prefix, time.Hour))
}
