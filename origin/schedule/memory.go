package schedule

import (
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"
)

// Memory is an in-process Schedule: a min-heap per partition with an index per user, and per
// partition the users taken by Due and not done, with when their take runs out.
type Memory struct {
	mu    sync.Mutex
	parts map[int]*dueHeap
	taken map[int]map[string]time.Time
}

// NewMemory returns an empty schedule.
func NewMemory() *Memory {
	return &Memory{parts: map[int]*dueHeap{}, taken: map[int]map[string]time.Time{}}
}

func (m *Memory) part(p int) *dueHeap {
	h := m.parts[p]
	if h == nil {
		h = &dueHeap{index: map[string]int{}}
		m.parts[p] = h
	}
	return h
}

func (m *Memory) takes(p int) map[string]time.Time {
	t := m.taken[p]
	if t == nil {
		t = map[string]time.Time{}
		m.taken[p] = t
	}
	return t
}

// At implements Schedule.
func (m *Memory) At(_ context.Context, p int, user string, due time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.part(p)
	if i, ok := h.index[user]; ok {
		if due.Before(h.items[i].due) {
			h.items[i].due = due
			heap.Fix(h, i)
		}
		return nil
	}
	heap.Push(h, item{user: user, due: due})
	return nil
}

// AtMany implements Batcher.
func (m *Memory) AtMany(ctx context.Context, p int, users []string, dues []time.Time) error {
	for i, u := range users {
		if err := m.At(ctx, p, u, dues[i]); err != nil {
			return err
		}
	}
	return nil
}

// Due implements Schedule.
func (m *Memory) Due(_ context.Context, p int, now time.Time, max int) ([]Taken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	taken := m.takes(p)
	var out []Taken
	for u, until := range taken { // takes that ran out first, oldest first
		if !until.After(now) {
			out = append(out, Taken{User: u, At: until.Add(-Lease)})
		}
	}
	slices.SortFunc(out, func(a, b Taken) int { return a.At.Compare(b.At) })
	out = out[:min(len(out), max)]
	h := m.part(p)
	for h.Len() > 0 && len(out) < max && !h.items[0].due.After(now) {
		it := heap.Pop(h).(item)
		out = append(out, Taken{User: it.user, At: it.due})
	}
	for _, t := range out {
		taken[t.User] = now.Add(Lease)
	}
	return out, nil
}

// Done implements Schedule.
func (m *Memory) Done(_ context.Context, p int, users ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	taken := m.takes(p)
	for _, u := range users {
		delete(taken, u)
	}
	return nil
}

// Cancel implements Schedule.
func (m *Memory) Cancel(_ context.Context, p int, user string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.part(p)
	if i, ok := h.index[user]; ok {
		heap.Remove(h, i)
	}
	delete(m.takes(p), user)
	return nil
}

type item struct {
	user string
	due  time.Time
}

type dueHeap struct {
	items []item
	index map[string]int
}

func (h *dueHeap) Len() int           { return len(h.items) }
func (h *dueHeap) Less(i, j int) bool { return h.items[i].due.Before(h.items[j].due) }
func (h *dueHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.index[h.items[i].user] = i
	h.index[h.items[j].user] = j
}
func (h *dueHeap) Push(x any) {
	it := x.(item)
	h.index[it.user] = len(h.items)
	h.items = append(h.items, it)
}
func (h *dueHeap) Pop() any {
	it := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	delete(h.index, it.user)
	return it
}
