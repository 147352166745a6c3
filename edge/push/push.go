// Package push fans a user's segment changes out to that user's open connections (Server-Sent
// Events or WebSocket) on this edge.
//
// Every message carries the user's whole state (segments, versions), never a diff, so a
// subscriber that falls behind loses nothing by skipping to the newest message: a slow
// connection's buffer keeps only the latest. Message ids are the replica's per-user version, so
// a client reconnecting with Last-Event-ID is sent the current state when it is newer than what
// it saw, and nothing otherwise: no gaps, no duplicates.
package push

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Message is one state of one user.
type Message struct {
	ID      uint64 // the user's replica version (or 0 before any)
	Ruleset uint64 // the edge's ruleset version the message was made with
	Event   string // SSE event name: "segments"
	Data    []byte // JSON, ready to send
}

// ErrTooMany is returned when a connection limit is reached.
var ErrTooMany = errors.New("too many live connections")

// Hub holds the live subscriptions.
type Hub struct {
	maxPerUser, maxTotal int

	mu    sync.Mutex
	users map[string]map[*Sub]struct{}
	total int

	conns   prometheus.Gauge
	refused *prometheus.CounterVec
	sent    prometheus.Counter
	dropped prometheus.Counter
}

// NewHub returns a hub allowing maxPerUser connections per user and maxTotal in all.
func NewHub(maxPerUser, maxTotal int, reg prometheus.Registerer) *Hub {
	h := &Hub{
		maxPerUser: maxPerUser, maxTotal: maxTotal, users: map[string]map[*Sub]struct{}{},
		conns:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "segedge_edge_push_connections", Help: "Open segment streams (SSE and WebSocket)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segedge_edge_push_refused_total", Help: "Stream connections refused, by limit (user, total)."}, []string{"limit"}),
		sent:    prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_push_messages_total", Help: "Messages queued to open streams."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "segedge_edge_push_superseded_total", Help: "Messages replaced by a newer one before a slow stream sent them."}),
	}
	h.refused.WithLabelValues("user")
	h.refused.WithLabelValues("total")
	reg.MustRegister(h.conns, h.refused, h.sent, h.dropped)
	return h
}

// Sub is one live connection of one user.
type Sub struct {
	h    *Hub
	user string
	c    chan Message
	once sync.Once
}

// C delivers the user's newest states.
func (s *Sub) C() <-chan Message { return s.c }

// Close unsubscribes; safe to call twice.
func (s *Sub) Close() {
	s.once.Do(func() {
		h := s.h
		h.mu.Lock()
		defer h.mu.Unlock()
		if subs := h.users[s.user]; subs != nil {
			delete(subs, s)
			if len(subs) == 0 {
				delete(h.users, s.user)
			}
		}
		h.total--
		h.conns.Dec()
	})
}

// Check reports whether Subscribe(user) would be within the limits now, without taking a place;
// a "no" is counted as a refusal. A protocol that cannot refuse once it has committed to a
// response (the WebSocket upgrade) checks first; Subscribe stays the authority.
func (h *Hub) Check(user string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.admit(user)
}

func (h *Hub) admit(user string) error {
	if h.total >= h.maxTotal {
		h.refused.WithLabelValues("total").Inc()
		return ErrTooMany
	}
	if len(h.users[user]) >= h.maxPerUser {
		h.refused.WithLabelValues("user").Inc()
		return ErrTooMany
	}
	return nil
}

// Subscribe opens a subscription for user, within the limits.
func (h *Hub) Subscribe(user string) (*Sub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.admit(user); err != nil {
		return nil, err
	}
	subs := h.users[user]
	if subs == nil {
		subs = map[*Sub]struct{}{}
		h.users[user] = subs
	}
	s := &Sub{h: h, user: user, c: make(chan Message, 1)}
	subs[s] = struct{}{}
	h.total++
	h.conns.Inc()
	return s, nil
}

// Publish queues m to every connection of user. It never blocks: a connection that has not sent
// the previous message yet gets this one instead (it is a newer whole state).
func (h *Hub) Publish(user string, m Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.users[user] {
		select {
		case s.c <- m:
		default:
			select {
			case <-s.c:
				h.dropped.Inc()
			default:
			}
			select {
			case s.c <- m:
			default:
			}
		}
		h.sent.Inc()
	}
}

// Broadcast queues m to every connection (a ruleset change).
func (h *Hub) Broadcast(build func(user string) (Message, bool)) {
	h.mu.Lock()
	users := make([]string, 0, len(h.users))
	for u := range h.users {
		users = append(users, u)
	}
	h.mu.Unlock()
	for _, u := range users {
		if m, ok := build(u); ok {
			h.Publish(u, m)
		}
	}
}

// Connections returns the number of open subscriptions.
func (h *Hub) Connections() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.total
}
