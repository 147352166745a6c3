package redis

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/store"
)

// On a Cluster a Scan cursor names its master by address, with the list of masters it was made
// among; a cursor the current masters cannot continue — its master is none now (failover,
// shrink), or the masters are others (growth) — is an error, never an empty next cursor: the
// rescan takes "" for the end of the store and would mark its partitions done with users never
// visited, where an error makes it scan again from the start.
func TestClusterScanCursorNamesItsMaster(t *testing.T) {
	rc := testenv.StartRedisCluster(t)
	s, err := New(rc.Client, rc.Prefix, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const users = 30
	for i := range users {
		if err := rc.Client.HSet(ctx, rc.Prefix+"{u:"+strconv.Itoa(i)+"}:p", "v", "1").Err(); err != nil {
			t.Fatal(err)
		}
	}
	got, cursors, cursor := map[string]bool{}, []string(nil), ""
	for {
		ids, next, err := s.Scan(ctx, cursor, 5)
		if err != nil {
			t.Fatalf("Scan(%q): %v", cursor, err)
		}
		for _, id := range ids {
			got[id] = true
		}
		if next == "" {
			break
		}
		if addr, _, _ := strings.Cut(next, "|"); !slices.Contains(rc.Addrs, addr) {
			t.Fatalf("cursor %q does not name one of the masters %v", next, rc.Addrs)
		}
		cursors = append(cursors, next)
		cursor = next
	}
	if len(got) != users || len(cursors) < 2 {
		t.Fatalf("scan found %d of %d users through cursors %q; want all, on 3 masters", len(got), users, cursors)
	}
	parts := strings.Split(cursors[0], "|")
	for name, c := range map[string]string{
		"a master that is none now":         "127.0.0.1:1|" + parts[1] + "|" + parts[2],
		"made among other masters":          parts[0] + "|" + parts[1] + "|0",
		"a master's place, as cursors were": "1:0",
		"no list of masters":                parts[0] + "|" + parts[1],
	} {
		if ids, next, err := s.Scan(ctx, c, 5); err == nil {
			t.Errorf("%s: Scan(%q) = %v, %q, nil; want an error", name, c, ids, next)
		}
	}
}

// On one server the cursor is "0:<SCAN cursor>", as before; a cursor of another node is an
// error, not the end of the scan.
func TestScanCursorOfNoNodeIsAnError(t *testing.T) {
	s := newTestStore(t, store.Options{})
	ctx := context.Background()
	for _, c := range []string{"1:0", "127.0.0.1:6379|0|abc", "x"} {
		if ids, next, err := s.Scan(ctx, c, 5); err == nil {
			t.Errorf("Scan(%q) = %v, %q, nil; want an error", c, ids, next)
		}
	}
	if _, next, err := s.Scan(ctx, "0:0", 5); err != nil || strings.Contains(next, "|") {
		t.Errorf("Scan(\"0:0\") = %q, %v; want a cursor of the one-server form", next, err)
	}
}
