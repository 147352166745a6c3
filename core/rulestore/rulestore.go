// Package rulestore keeps ruleset versions in JetStream, where the origin writes them and every
// origin worker and edge watches them.
//
// A version is immutable: its source, its compiled module, its manifest and its hand-written
// modules (if the rules file has any) live in the object store (bucket <prefix>RULESETS_OBJ), its metadata under "meta.<n>" in the key-value bucket
// <prefix>RULESETS, and the key "current" points at the version in force. Version numbers are
// handed out through the "latest" key with compare-and-set, so two uploads never get one number,
// and "current" moves with compare-and-set too, which is what If-Match builds on.
package rulestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Meta describes one stored version.
type Meta struct {
	Version    uint64    `json:"version"`
	Hash       string    `json:"hash"` // sha256 of the module, hex
	SourceHash string    `json:"source_hash"`
	Author     string    `json:"author,omitempty"`
	Message    string    `json:"message,omitempty"`
	Created    time.Time `json:"created"`
	Size       int       `json:"size"` // bytes of the module
	Segments   int       `json:"segments"`
	// Modules are the hand-written modules stored with the version, in the manifest's order.
	Modules []ModuleMeta `json:"modules,omitempty"`
}

// ModuleMeta describes one hand-written module of a version.
type ModuleMeta struct {
	Path string `json:"path"` // as written in the rules file
	Hash string `json:"hash"` // sha256 of the bytes, hex
	Size int    `json:"size"`
}

// Module is a hand-written module of a version: the path the rules file names it by, and its
// bytes.
type Module struct {
	Path string
	Data []byte
}

// Version is a stored version with its contents.
type Version struct {
	Meta     Meta
	Source   []byte
	Module   []byte
	Manifest []byte
	Modules  []Module // hand-written modules, in the manifest's order
}

// ModuleBytes returns the hand-written modules' bytes in order (rules.Ruleset.Modules).
func (v *Version) ModuleBytes() [][]byte {
	var out [][]byte
	for _, m := range v.Modules {
		out = append(out, m.Data)
	}
	return out
}

// Pointer is the value of the "current" key.
type Pointer struct {
	Version uint64 `json:"version"`
	Hash    string `json:"hash"`
}

var (
	// ErrNotFound: no such version, or no version at all yet.
	ErrNotFound = errors.New("ruleset version not found")
	// ErrStale: If-Match named a version that is no longer current.
	ErrStale = errors.New("ruleset changed since the version given in If-Match")
	// ErrCorrupt: a module does not match the hash recorded for it.
	ErrCorrupt = errors.New("ruleset module does not match its hash")
)

// Store reads and writes ruleset versions.
type Store struct {
	kv  jetstream.KeyValue
	obj jetstream.ObjectStore
}

// Open creates (or opens) the buckets named from prefix.
func Open(ctx context.Context, js jetstream.JetStream, bucket string) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "segedge ruleset versions: current pointer, version counter, metadata",
		History:     1,
	})
	if err != nil {
		return nil, fmt.Errorf("open ruleset bucket %s: %w", bucket, err)
	}
	obj, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      bucket + "_OBJ",
		Description: "segedge ruleset sources, modules and manifests",
	})
	if err != nil {
		return nil, fmt.Errorf("open ruleset object store %s_OBJ: %w", bucket, err)
	}
	return &Store{kv: kv, obj: obj}, nil
}

// Hash returns the hex sha256 of b, as recorded in Meta.Hash.
func Hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Current returns the pointer to the version in force, or ErrNotFound when none was ever stored.
func (s *Store) Current(ctx context.Context) (Pointer, error) {
	p, _, err := s.current(ctx)
	return p, err
}

func (s *Store) current(ctx context.Context) (Pointer, uint64, error) {
	e, err := s.kv.Get(ctx, "current")
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Pointer{}, 0, ErrNotFound
	}
	if err != nil {
		return Pointer{}, 0, fmt.Errorf("read current ruleset: %w", err)
	}
	var p Pointer
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return Pointer{}, 0, fmt.Errorf("read current ruleset: %w", err)
	}
	return p, e.Revision(), nil
}

// Put stores a new version and makes it current. With ifMatch > 0 it fails with ErrStale unless
// ifMatch is the current version (and stays so until the switch). ifMatch == 0 means no check.
func (s *Store) Put(ctx context.Context, v Version, ifMatch uint64) (Meta, error) {
	cur, curRev, err := s.current(ctx)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Meta{}, err
	}
	if ifMatch != 0 && cur.Version != ifMatch {
		return Meta{}, fmt.Errorf("%w: current is %d, If-Match %d", ErrStale, cur.Version, ifMatch)
	}
	n, err := s.nextVersion(ctx)
	if err != nil {
		return Meta{}, err
	}
	m := v.Meta
	m.Version = n
	m.Hash = Hash(v.Module)
	m.SourceHash = Hash(v.Source)
	m.Size = len(v.Module)
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	parts := map[string][]byte{"src": v.Source, "wasm": v.Module, "manifest": v.Manifest}
	m.Modules = nil
	for i, mod := range v.Modules {
		parts[moduleSuffix(i)] = mod.Data
		m.Modules = append(m.Modules, ModuleMeta{Path: mod.Path, Hash: Hash(mod.Data), Size: len(mod.Data)})
	}
	for suffix, b := range parts {
		if _, err := s.obj.PutBytes(ctx, objName(n, suffix), b); err != nil {
			return Meta{}, fmt.Errorf("store ruleset %d %s: %w", n, suffix, err)
		}
	}
	mb, _ := json.Marshal(m)
	if _, err := s.kv.Create(ctx, metaKey(n), mb); err != nil {
		return Meta{}, fmt.Errorf("store ruleset %d metadata: %w", n, err)
	}
	if err := s.point(ctx, Pointer{Version: n, Hash: m.Hash}, curRev, ifMatch != 0); err != nil {
		return m, err
	}
	return m, nil
}

// point moves "current" with compare-and-set on rev (0: the key must not exist yet). Without
// strict, a lost race is retried against the newer pointer (last writer wins); with strict it is
// ErrStale.
func (s *Store) point(ctx context.Context, p Pointer, rev uint64, strict bool) error {
	b, _ := json.Marshal(p)
	for attempt := 0; attempt < 10; attempt++ {
		var err error
		if rev == 0 {
			_, err = s.kv.Create(ctx, "current", b)
		} else {
			_, err = s.kv.Update(ctx, "current", b, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return fmt.Errorf("switch current ruleset to %d: %w", p.Version, err)
		}
		if strict {
			return fmt.Errorf("%w: another change won the race", ErrStale)
		}
		if _, rev, err = s.current(ctx); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return fmt.Errorf("switch current ruleset to %d: too much contention", p.Version)
}

func isWrongSequence(err error) bool {
	return strings.Contains(err.Error(), "wrong last sequence")
}

// nextVersion hands out the next version number with compare-and-set on "latest".
func (s *Store) nextVersion(ctx context.Context) (uint64, error) {
	for attempt := 0; attempt < 20; attempt++ {
		e, err := s.kv.Get(ctx, "latest")
		var n, rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return 0, fmt.Errorf("read ruleset counter: %w", err)
		default:
			rev = e.Revision()
			if n, err = strconv.ParseUint(string(e.Value()), 10, 64); err != nil {
				return 0, fmt.Errorf("ruleset counter %q: %w", e.Value(), err)
			}
		}
		next := []byte(strconv.FormatUint(n+1, 10))
		if rev == 0 {
			_, err = s.kv.Create(ctx, "latest", next)
		} else {
			_, err = s.kv.Update(ctx, "latest", next, rev)
		}
		if err == nil {
			return n + 1, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return 0, fmt.Errorf("advance ruleset counter: %w", err)
		}
	}
	return 0, errors.New("advance ruleset counter: too much contention")
}

// Activate makes an existing version current (a rollback, or a roll forward). ifMatch as in Put.
func (s *Store) Activate(ctx context.Context, version, ifMatch uint64) (Meta, error) {
	m, err := s.Meta(ctx, version)
	if err != nil {
		return Meta{}, err
	}
	cur, rev, err := s.current(ctx)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Meta{}, err
	}
	if ifMatch != 0 && cur.Version != ifMatch {
		return Meta{}, fmt.Errorf("%w: current is %d, If-Match %d", ErrStale, cur.Version, ifMatch)
	}
	return m, s.point(ctx, Pointer{Version: m.Version, Hash: m.Hash}, rev, ifMatch != 0)
}

// Meta returns one version's metadata.
func (s *Store) Meta(ctx context.Context, version uint64) (Meta, error) {
	e, err := s.kv.Get(ctx, metaKey(version))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Meta{}, fmt.Errorf("%w: %d", ErrNotFound, version)
	}
	if err != nil {
		return Meta{}, fmt.Errorf("read ruleset %d metadata: %w", version, err)
	}
	var m Meta
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return Meta{}, fmt.Errorf("read ruleset %d metadata: %w", version, err)
	}
	return m, nil
}

// Get returns a version with its contents, checking the module against its recorded hash.
func (s *Store) Get(ctx context.Context, version uint64) (*Version, error) {
	m, err := s.Meta(ctx, version)
	if err != nil {
		return nil, err
	}
	v := &Version{Meta: m}
	for _, part := range []struct {
		suffix string
		dst    *[]byte
	}{{"src", &v.Source}, {"wasm", &v.Module}, {"manifest", &v.Manifest}} {
		b, err := s.obj.GetBytes(ctx, objName(version, part.suffix))
		if err != nil {
			return nil, fmt.Errorf("read ruleset %d %s: %w", version, part.suffix, err)
		}
		*part.dst = b
	}
	if Hash(v.Module) != m.Hash {
		return nil, fmt.Errorf("ruleset %d: %w", version, ErrCorrupt)
	}
	for i, mm := range m.Modules {
		b, err := s.obj.GetBytes(ctx, objName(version, moduleSuffix(i)))
		if err != nil {
			return nil, fmt.Errorf("read ruleset %d module %q: %w", version, mm.Path, err)
		}
		if Hash(b) != mm.Hash {
			return nil, fmt.Errorf("ruleset %d module %q: %w", version, mm.Path, ErrCorrupt)
		}
		v.Modules = append(v.Modules, Module{Path: mm.Path, Data: b})
	}
	return v, nil
}

// List returns every version's metadata, newest first.
func (s *Store) List(ctx context.Context) ([]Meta, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list rulesets: %w", err)
	}
	var out []Meta
	for k := range lister.Keys() {
		if !strings.HasPrefix(k, "meta.") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(k, "meta."), 10, 64)
		if err != nil {
			continue
		}
		m, err := s.Meta(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version > out[j].Version })
	return out, nil
}

// Watch sends the current pointer now (if any) and on every change, until ctx is done. The
// channel is closed when the watch ends.
func (s *Store) Watch(ctx context.Context) (<-chan Pointer, error) {
	w, err := s.kv.Watch(ctx, "current")
	if err != nil {
		return nil, fmt.Errorf("watch current ruleset: %w", err)
	}
	out := make(chan Pointer, 1)
	go func() {
		defer close(out)
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue // nil marks the end of the initial values
				}
				var p Pointer
				if json.NewDecoder(bytes.NewReader(e.Value())).Decode(&p) != nil {
					continue
				}
				select {
				case out <- p:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

func moduleSuffix(i int) string            { return "module." + strconv.Itoa(i) + ".wasm" }
func metaKey(n uint64) string              { return "meta." + strconv.FormatUint(n, 10) }
func objName(n uint64, part string) string { return "v" + strconv.FormatUint(n, 10) + "." + part }
