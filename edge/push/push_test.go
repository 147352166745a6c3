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
