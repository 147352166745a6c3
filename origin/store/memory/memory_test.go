package memory

import (
	"testing"

	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts store.Options) store.Store {
		s := New(opts)
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func BenchmarkApply(b *testing.B) {
	storetest.BenchmarkApply(b, New(store.Options{}), 1)
}
