package main

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// eventType is one kind of event in the mix, with its share (out of 1000) and how to write its
// props.
type eventType struct {
	name  string
	share int
	props func(b []byte, r *rand.Rand) []byte
}

// mix is a shop's traffic: mostly page views, some carts, few purchases and identifies.
var mix = []eventType{
	{"page_view", 700, func(b []byte, r *rand.Rand) []byte {
		b = append(b, `{"path":"/p/`...)
		b = strconv.AppendInt(b, int64(r.IntN(5000)), 10)
		return append(b, `","referrer":"https://www.example.com/"}`...)
	}},
	{"add_to_cart", 150, func(b []byte, r *rand.Rand) []byte {
		b = append(b, `{"sku":"SKU-`...)
		b = strconv.AppendInt(b, int64(r.IntN(2000)), 10)
		b = append(b, `","price":`...)
		b = strconv.AppendFloat(b, float64(r.IntN(20000))/100, 'f', 2, 64)
		return append(b, `,"qty":1}`...)
	}},
	{"identify", 50, func(b []byte, r *rand.Rand) []byte {
		plans := []string{"free", "pro", "team"}
		b = append(b, `{"plan":"`...)
		b = append(b, plans[r.IntN(len(plans))]...)
		b = append(b, `","country":"DE","newsletter":`...)
		return append(strconv.AppendBool(b, r.IntN(2) == 0), '}')
	}},
	{"purchase_completed", 50, func(b []byte, r *rand.Rand) []byte {
		b = append(b, `{"order_id":"o-`...)
		b = strconv.AppendUint(b, r.Uint64(), 36)
		b = append(b, `","amount":`...)
		return append(strconv.AppendFloat(b, float64(r.IntN(50000))/100, 'f', 2, 64), '}')
	}},
	{"search", 30, func(b []byte, r *rand.Rand) []byte {
		terms := []string{"shoes", "jacket", "gift", "sale"}
		return append(append(append(b, `{"q":"`...), terms[r.IntN(len(terms))]...), `"}`...)
	}},
	{"checkout_started", 20, func(b []byte, r *rand.Rand) []byte {
		return append(strconv.AppendInt(append(b, `{"items":`...), int64(1+r.IntN(5)), 10), '}')
	}},
}

// generator writes batches of events. One per sending goroutine: it is not safe for concurrent use.
type generator struct {
	run   string // unique per loadgen run, so event ids never collide with an earlier run's
	users int
	rng   *rand.Rand
	zipf  *rand.Zipf
}

func newGenerator(run string, users int, seed uint64) *generator {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return &generator{
		run: run, users: users, rng: rng,
		// Activity is heavy-tailed but no user dominates: P(k) ∝ (50+k)^-1.1, so with 10,000
		// users the most active sends ~0.5% of the events and the top 1% ~25%. (A sharper skew
		// would mostly measure one partition worker, since one user's events are serial.)
		zipf: rand.NewZipf(rng, 1.1, 50, uint64(users-1)),
	}
}

// batch appends a JSON array of n events, all timestamped now, to b; next numbers the events
// (unique within the run).
func (g *generator) batch(b []byte, n int, now time.Time, next func() uint64) []byte {
	ts := now.UTC().AppendFormat(nil, time.RFC3339Nano)
	b = append(b, '[')
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		t := g.pick()
		b = append(b, `{"event_id":"`...)
		b = append(b, g.run...)
		b = append(b, '-')
		b = strconv.AppendUint(b, next(), 36)
		b = append(b, `","user_id":"`...)
		b = append(b, g.run...)
		b = append(b, "-u"...)
		b = strconv.AppendUint(b, g.zipf.Uint64(), 10)
		b = append(b, `","type":"`...)
		b = append(b, t.name...)
		b = append(b, `","ts":"`...)
		b = append(b, ts...)
		b = append(b, `","props":`...)
		b = t.props(b, g.rng)
		b = append(b, '}')
	}
	return append(b, ']')
}

func (g *generator) pick() *eventType {
	n := g.rng.IntN(1000)
	for i := range mix {
		if n < mix[i].share {
			return &mix[i]
		}
		n -= mix[i].share
	}
	return &mix[0]
}
