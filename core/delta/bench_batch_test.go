package delta

import "testing"

func benchBatch(b *testing.B, ds []*Delta) {
	body, err := EncodeBatch(ds)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode/batch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := EncodeBatches(ds, 0); err != nil {
				b.Fatal(err)
			}
			_ = BatchMsgID(ds)
		}
	})
	b.Run("decode/batch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeBatch(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
