package members

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

// The Redis store on a real three-master Redis Cluster: the single-Redis behaviour (conformance,
// batches), and a batch whose users sit on every master, which one MGET or MSET would have the
// cluster refuse (CROSSSLOT).
func TestRedisCluster(t *testing.T) {
	rc := testenv.StartRedisCluster(t)
	t.Run("Conformance", func(t *testing.T) {
		conformance(t, NewRedis(rc.Client, testenv.Prefix(t), time.Hour))
	})
	t.Run("Batch", func(t *testing.T) {
		batchConformance(t, NewRedis(rc.Client, testenv.Prefix(t), time.Hour))
	})
	t.Run("BatchOverEveryMaster", func(t *testing.T) {
		s := NewRedis(rc.Client, testenv.Prefix(t), time.Hour)
		ctx := context.Background()
		var users []string
		var put []Record
		masters := map[string]bool{}
		for i := range 40 {
			u := fmt.Sprintf("user-%d", i)
			m, err := rc.Client.MasterForKey(ctx, s.key(u))
			if err != nil {
				t.Fatal(err)
			}
			masters[m.Options().Addr] = true
			users = append(users, u)
			if i%4 != 3 { // every fourth user is never put: GetMany must return its zero record
				put = append(put, Record{Version: uint64(i + 1), Members: []string{"seg-" + u}})
			} else {
				put = append(put, Record{})
			}
		}
		if len(masters) != 3 {
			t.Fatalf("the users sit on masters %v, want all 3", masters)
		}
		var putUsers []string
		var putRecs []Record
		for i, r := range put {
			if r.Version != 0 {
				putUsers, putRecs = append(putUsers, users[i]), append(putRecs, r)
			}
		}
		if err := s.PutMany(ctx, putUsers, putRecs); err != nil {
			t.Fatalf("PutMany over %d masters: %v", len(masters), err)
		}
		got, err := s.GetMany(ctx, users)
		if err != nil {
			t.Fatalf("GetMany over %d masters: %v", len(masters), err)
		}
		for i, r := range got {
			if r.Version != put[i].Version || !slices.Equal(r.Members, put[i].Members) {
				t.Errorf("GetMany: %s = %+v, want %+v", users[i], r, put[i])
			}
		}
		if one, err := s.Get(ctx, users[len(users)-2]); err != nil || one.Version != put[len(users)-2].Version {
			t.Errorf("Get(%s) after PutMany = %+v, %v", users[len(users)-2], one, err)
		}
	})
}
