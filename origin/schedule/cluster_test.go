package schedule

import (
	"testing"

	"github.com/segedge/segedge/core/testenv"
)

// The Redis schedule on a real three-master Redis Cluster: the partitions' sorted sets sit on
// different masters, and the script that takes due users touches a partition's two keys, which
// share the partition's hash tag {pN} and so its slot.
func TestRedisCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t)
	t.Run("Conformance", func(t *testing.T) { conformance(t, NewRedis(rc.Client, testenv.Prefix(t))) })
	t.Run("AtMany", func(t *testing.T) { batchConformance(t, NewRedis(rc.Client, testenv.Prefix(t))) })
}
