package schedule

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

func conformance(t *testing.T, s Schedule) {
	ctx := context.Background()
	t0 := time.Unix(1_800_000_000, 0)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.At(ctx, 0, "alice", t0.Add(30*time.Minute)))
	must(s.At(ctx, 0, "alice", t0.Add(40*time.Minute))) // later: the earlier stays
	must(s.At(ctx, 0, "bob", t0.Add(10*time.Minute)))
	must(s.At(ctx, 0, "bob", t0.Add(5*time.Minute))) // earlier: replaces
	must(s.At(ctx, 1, "carol", t0.Add(time.Minute)))
	must(s.At(ctx, 0, "dave", t0.Add(time.Minute)))
	must(s.Cancel(ctx, 0, "dave"))

	tests := []struct {
		at   time.Duration
		part int
		want []string
	}{
		{4 * time.Minute, 0, nil},
		{5 * time.Minute, 0, []string{"bob"}},
		{5 * time.Minute, 0, nil}, // taken once
		{29 * time.Minute, 0, nil},
		{2 * time.Hour, 0, []string{"alice"}},
		{2 * time.Hour, 1, []string{"carol"}},
	}
	for _, tt := range tests {
		taken, err := s.Due(ctx, tt.part, t0.Add(tt.at), 100)
		must(err)
		got := usersOf(taken)
		if !slices.Equal(got, tt.want) {
			t.Errorf("Due(p%d, +%s) = %v, want %v", tt.part, tt.at, got, tt.want)
		}
		must(s.Done(ctx, tt.part, got...)) // as the worker does once they are re-evaluated
	}
	// Each comes with the time it was due, for the lateness of its exit.
	must(s.At(ctx, 5, "ivy", t0.Add(90*time.Second)))
	if taken, _ := s.Due(ctx, 5, t0.Add(2*time.Minute), 10); len(taken) != 1 || !taken[0].At.Equal(t0.Add(90*time.Second)) {
		t.Errorf("Due(p5) = %+v, want ivy due at +1m30s", taken)
	}

	// max bounds one take; the rest stays for the next.
	for i := range 5 {
		must(s.At(ctx, 2, string(rune('a'+i)), t0))
	}
	first, _ := s.Due(ctx, 2, t0, 3)
	rest, _ := s.Due(ctx, 2, t0, 3)
	if len(first) != 3 || len(rest) != 2 {
		t.Errorf("takes of 3 from 5: %v then %v", first, rest)
	}

	// A user taken and never done (the worker died before its re-evaluation was out) is
	// returned again once the take has run out, not before; once done, never again; a user
	// the worker took and then erased is forgotten.
	must(s.At(ctx, 3, "erin", t0))
	must(s.At(ctx, 3, "frank", t0))
	must(s.At(ctx, 3, "gina", t0))
	steps := []struct {
		at   time.Duration
		want []string
		done []string
	}{
		{0, []string{"erin", "frank", "gina"}, []string{"frank"}}, // the worker dies after frank
		{Lease - time.Millisecond, nil, nil},                      // still taken
		{Lease, []string{"erin", "gina"}, nil},                    // the next holder gets them
		{2*Lease - time.Millisecond, nil, nil},
		{2 * Lease, []string{"erin", "gina"}, []string{"erin", "gina"}},
		{time.Hour, nil, nil},
	}
	for _, st := range steps {
		taken, err := s.Due(ctx, 3, t0.Add(st.at), 100)
		must(err)
		got := usersOf(taken)
		slices.Sort(got)
		if !slices.Equal(got, st.want) {
			t.Errorf("Due(p3, +%s) = %v, want %v (a take runs out after %s)", st.at, got, st.want, Lease)
		}
		must(s.Done(ctx, 3, st.done...))
	}
	must(s.At(ctx, 4, "hugo", t0))
	if got, _ := s.Due(ctx, 4, t0, 10); !slices.Equal(usersOf(got), []string{"hugo"}) {
		t.Fatalf("Due(p4) = %v", got)
	}
	must(s.Cancel(ctx, 4, "hugo")) // erased while taken
	if got, _ := s.Due(ctx, 4, t0.Add(time.Hour), 10); len(got) != 0 {
		t.Errorf("a cancelled take came back: %v", got)
	}
}

func usersOf(taken []Taken) []string {
	var out []string
	for _, t := range taken {
		out = append(out, t.User)
	}
	return out
}

func TestMemory(t *testing.T) { conformance(t, NewMemory()) }

func TestRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	conformance(t, NewRedis(r.Client, r.Prefix))
}
