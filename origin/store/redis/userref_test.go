package redis

import (
	"context"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/storetest"
)

// The store's errors end up in log records: they name the user by ops.UserRef (a keyed hash by
// default), never by the raw id.
func TestErrorsNameTheUserByHash(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	s, err := New(c, "down:", store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const user = "alice@example.com"
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"apply", func() error {
			_, _, err := s.Apply(ctx, event.Event{ID: "e1", UserID: user, Type: "x", TS: time.Now()}, storetest.Spec())
			return err
		}},
		{"get", func() error { _, err := s.Get(ctx, user); return err }},
		{"delete", func() error { return s.Delete(ctx, user) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if err == nil {
				t.Fatal("no error with Redis down")
			}
			if strings.Contains(err.Error(), user) || !strings.Contains(err.Error(), ops.UserRef(user)) {
				t.Errorf("error %q: want the user as %s, not the raw id", err, ops.UserRef(user))
			}
		})
	}
}
