package push

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestUsersOnlyGetTheirOwnMessages(t *testing.T) {
	h := NewHub(2, 10, prometheus.NewRegistry())
	a, _ := h.Subscribe("alice")
	b, _ := h.Subscribe("bob")
	h.Publish("alice", Message{ID: 1, Data: []byte("a1")})
	if m := <-a.C(); m.ID != 1 {
		t.Fatalf("alice got %+v", m)
	}
	select {
	case m := <-b.C():
		t.Fatalf("bob got alice's message %+v", m)
	default:
	}
}

func TestSlowSubscriberGetsTheNewestState(t *testing.T) {
	h := NewHub(2, 10, prometheus.NewRegistry())
	s, _ := h.Subscribe("u")
	for i := uint64(1); i <= 5; i++ {
		h.Publish("u", Message{ID: i})
	}
	if m := <-s.C(); m.ID != 5 {
		t.Fatalf("got %d, want the newest (5)", m.ID)
	}
}

func TestLimits(t *testing.T) {
	h := NewHub(2, 3, prometheus.NewRegistry())
	s1, err1 := h.Subscribe("u")
	_, err2 := h.Subscribe("u")
	_, err3 := h.Subscribe("u")
	if err1 != nil || err2 != nil || err3 != ErrTooMany {
		t.Fatalf("per-user limit: %v %v %v", err1, err2, err3)
	}
	if _, err := h.Subscribe("v"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Subscribe("w"); err != ErrTooMany {
		t.Fatalf("total limit: %v", err)
	}
	s1.Close()
	s1.Close()
	if _, err := h.Subscribe("w"); err != nil {
		t.Fatalf("after a close: %v", err)
	}
	if n := h.Connections(); n != 3 {
		t.Fatalf("connections = %d", n)
	}
}

func TestCheckTakesNoPlaceAndCountsRefusals(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewHub(1, 2, reg)
	refused := func(limit string) float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "segedge_edge_push_refused_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == limit {
					return m.GetCounter().GetValue()
				}
			}
		}
		return -1
	}
	for i := 0; i < 3; i++ { // checking again and again takes no place
		if err := h.Check("a"); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if _, err := h.Subscribe("a"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, limit string
		want        error
		refused     float64
	}{
		{"a", "user", ErrTooMany, 1}, // a has its one stream
		{"b", "user", nil, 1},
	} {
		if err := h.Check(tc.user); err != tc.want {
			t.Fatalf("Check(%s) = %v, want %v", tc.user, err, tc.want)
		}
		if got := refused(tc.limit); got != tc.refused {
			t.Fatalf("after Check(%s): refused{limit=%s} = %v, want %v", tc.user, tc.limit, got, tc.refused)
		}
	}
	if _, err := h.Subscribe("b"); err != nil {
		t.Fatal(err)
	}
	if err := h.Check("c"); err != ErrTooMany || refused("total") != 1 {
		t.Fatalf("Check over the total: %v, refused{total} = %v", err, refused("total"))
	}
	if n := h.Connections(); n != 2 {
		t.Fatalf("connections = %d, want 2", n)
	}
}
