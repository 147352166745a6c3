package rulestore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segedge/segedge/core/testenv"
)

func open(t *testing.T) *Store {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, n.JS, n.Topology.RulesetBucket())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func version(src string) Version {
	return Version{Source: []byte(src), Module: []byte("\x00asm" + src), Manifest: []byte(`{}`), Meta: Meta{Author: "ann", Message: src}}
}

func TestPutGetListActivate(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.Current(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Current on empty store = %v, want ErrNotFound", err)
	}
	m1, err := s.Put(ctx, version("one"), 0)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := s.Put(ctx, version("two"), m1.Version)
	if err != nil {
		t.Fatal(err)
	}
	if m1.Version != 1 || m2.Version != 2 {
		t.Fatalf("versions %d, %d; want 1, 2", m1.Version, m2.Version)
	}
	cur, _ := s.Current(ctx)
	if cur.Version != 2 || cur.Hash != Hash([]byte("\x00asmtwo")) {
		t.Fatalf("current = %+v", cur)
	}
	v, err := s.Get(ctx, 1)
	if err != nil || string(v.Source) != "one" || v.Meta.Author != "ann" {
		t.Fatalf("Get(1) = %+v, %v", v, err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 2 || list[0].Version != 2 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := s.Activate(ctx, 1, 2); err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.Current(ctx); cur.Version != 1 {
		t.Fatalf("after rollback current = %d", cur.Version)
	}
	if _, err := s.Activate(ctx, 9, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Activate(9) = %v, want ErrNotFound", err)
	}
}

func TestStaleIfMatchIsRefusedAndChangesNothing(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.Put(ctx, version("one"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, version("two"), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, version("late"), 1); !errors.Is(err, ErrStale) {
		t.Fatalf("Put with stale If-Match = %v, want ErrStale", err)
	}
	if cur, _ := s.Current(ctx); cur.Version != 2 {
		t.Fatalf("current = %d, want 2", cur.Version)
	}
}

func TestConcurrentPutsGetDistinctVersions(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	got := make(chan uint64, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := s.Put(ctx, version("x"), 0)
			if err != nil {
				t.Error(err)
				return
			}
			got <- m.Version
		}()
	}
	wg.Wait()
	close(got)
	seen := map[uint64]bool{}
	for v := range got {
		if seen[v] {
			t.Fatalf("version %d handed out twice", v)
		}
		seen[v] = true
	}
	if len(seen) != 8 {
		t.Fatalf("%d versions, want 8", len(seen))
	}
}

func TestWatchSeesEverySwitch(t *testing.T) {
	s := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Put(ctx, version("one"), 0); err != nil {
		t.Fatal(err)
	}
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := <-ch; p.Version != 1 {
		t.Fatalf("first pointer %d, want 1 (the current one)", p.Version)
	}
	if _, err := s.Put(ctx, version("two"), 0); err != nil {
		t.Fatal(err)
	}
	if p := <-ch; p.Version != 2 {
		t.Fatalf("next pointer %d, want 2", p.Version)
	}
}

// Hand-written modules are stored with the version and checked against their hashes on read.
func TestModulesStoredAndHashChecked(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	v := version("with modules")
	v.Modules = []Module{{Path: "a/promo.wasm", Data: []byte("\x00asm promo")}, {Path: "churn.wasm", Data: []byte("\x00asm churn")}}
	m, err := s.Put(ctx, v, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Modules) != 2 || m.Modules[0].Path != "a/promo.wasm" || m.Modules[1].Hash != Hash([]byte("\x00asm churn")) || m.Modules[1].Size != 10 {
		t.Fatalf("meta modules %+v", m.Modules)
	}
	got, err := s.Get(ctx, m.Version)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Modules) != 2 || string(got.Modules[1].Data) != "\x00asm churn" || got.Modules[0].Path != "a/promo.wasm" || len(got.ModuleBytes()) != 2 {
		t.Fatalf("Get modules %+v", got.Modules)
	}
	// A module whose bytes changed in the object store is refused.
	if _, err := s.obj.PutBytes(ctx, objName(m.Version, moduleSuffix(1)), []byte("tampered")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, m.Version); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `module "churn.wasm"`) {
		t.Fatalf("Get of a tampered module = %v, want ErrCorrupt naming it", err)
	}
}
