package memory

import (
	"testing"

	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

func newForTest(t *testing.T, opts store.Options) store.Store {
	s := New(opts)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSampleConformance(t *testing.T) {
	storetest.RunSample(t, newForTest)
	t.Run("Expiry", func(t *testing.T) { storetest.RunSampleExpiry(t, newForTest) })
}
