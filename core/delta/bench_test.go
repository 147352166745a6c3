package delta

import (
	"fmt"
	"testing"

	"github.com/segedge/segedge/core/profile"
)

// benchDeltas is a full partition batch (128 events) of typical event deltas: a few members, two
// features the request-scoped rules read, the accepted time.
func benchDeltas() []*Delta {
	ds := make([]*Delta, 128)
	for i := range ds {
		ds[i] = &Delta{UserID: fmt.Sprintf("lg1a2b3c4d-%06d", i*7919%100000), Version: uint64(i + 1), Ruleset: 3, Cause: CauseEvent,
			Members: []string{"browsers", "cart_abandoner", "high_engagement"}, Entered: []string{"cart_abandoner"},
			Features: []FeatureValue{
				{Key: "score:engagement", Value: profile.DoubleValue(81.53125)},
				{Key: "count:add_to_cart:30m0s", Value: profile.IntValue(3)},
			}, AcceptedAt: 1764400000000 + int64(i)}
	}
	return ds
}

// BenchmarkDeltaMessages: the cost of one partition batch's deltas on the wire, per batch of 128.
// per-delta is what the origin did before batching (one message, one Encode and one Decode per
// delta); batch is one format-1 message. Run the per-delta cases at an older commit to compare
// with the encoding/json encoder.
func BenchmarkDeltaMessages(b *testing.B) {
	ds := benchDeltas()
	bodies := make([][]byte, len(ds))
	for i, d := range ds {
		bodies[i], _ = Encode(d)
	}
	b.Run("encode/per-delta", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, d := range ds {
				if _, err := Encode(d); err != nil {
					b.Fatal(err)
				}
				_ = MsgID(d)
			}
		}
	})
	b.Run("decode/per-delta", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, body := range bodies {
				if _, err := Decode(body); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	benchBatch(b, ds)
}
