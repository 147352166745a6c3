package redis

import (
	"testing"

	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

func TestSampleConformance(t *testing.T) {
	newStore := func(t *testing.T, opts store.Options) store.Store { return newTestStore(t, opts) }
	storetest.RunSample(t, newStore)
	t.Run("Expiry", func(t *testing.T) { storetest.RunSampleExpiry(t, newStore) })
}
