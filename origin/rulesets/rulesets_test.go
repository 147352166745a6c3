package rulesets

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/core/rulestore"
	"github.com/segedge/segedge/core/testenv"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
	"github.com/segedge/segedge/wasm"
)

var pathpromo struct {
	once sync.Once
	bin  []byte
	err  error
}

// buildPathpromo builds the example guest module as the Makefile does.
func buildPathpromo(t testing.TB) []byte {
	t.Helper()
	pathpromo.once.Do(func() {
		dir, err := os.MkdirTemp("", "segedge-pathpromo")
		if err != nil {
			pathpromo.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "pathpromo.wasm")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-buildmode=c-shared", "-o", out, "../../wasm/examples/pathpromo")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			pathpromo.err = errors.New("go build pathpromo: " + err.Error() + "\n" + string(b))
			return
		}
		pathpromo.bin, pathpromo.err = os.ReadFile(out)
	})
	if pathpromo.err != nil {
		t.Fatal(pathpromo.err)
	}
	return pathpromo.bin
}

type apiEnv struct {
	t       *testing.T
	srv     *httptest.Server
	mgr     *Manager
	store   *rulestore.Store
	loaded  chan Loaded
	profile store.Store
}

func newAPI(t *testing.T) *apiEnv { return newAPIWith(t, wasm.Config{}) }

// newAPIWith is newAPI with a sandbox configured by cfg (its registry and cache are set here).
func newAPIWith(t *testing.T, cfg wasm.Config) *apiEnv {
	t.Helper()
	n := testenv.StartNATS(t)
	ctx := context.Background()
	rs, err := rulestore.Open(ctx, n.JS, n.Topology.RulesetBucket())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Registerer = prometheus.NewRegistry()
	cfg.CacheDir = filepath.Join(os.TempDir(), "segedge-wasm-test-cache")
	rt, err := wasm.NewRuntime(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	e := &apiEnv{t: t, store: rs, loaded: make(chan Loaded, 16), profile: memory.New(store.Options{})}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e.mgr = NewManager(rs, &WasmCompiler{RT: rt}, log, prometheus.NewRegistry(), func(l Loaded, _ []byte) { e.loaded <- l })
	e.mgr.SampleFrom(e.profile)
	mux := http.NewServeMux()
	e.mgr.Routes(mux, func(h http.HandlerFunc) http.HandlerFunc { return h })
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	wctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go e.mgr.Watch(wctx)
	return e
}

type part struct{ field, filename, body string }

func multipartBody(parts ...part) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, p.field, p.filename))
		w, _ := mw.CreatePart(h)
		w.Write([]byte(p.body))
	}
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

func (e *apiEnv) do(method, path string, body []byte, contentType string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		e.t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	return res.StatusCode, out
}

const promoRules = `segments:
  - name: shopper
    rule: request.path.startsWith("/shop")
  - name: carted
    rule: count("add_to_cart", "30m") > 0
modules:
  - path: mods/pathpromo.wasm
    segments: [deep_browser, valid_promo]
    features: ['request.path', 'request.query("promo")']
slots:
  - name: hero
    variants:
      - when: valid_promo
        html: promo
      - when: shopper
        html: shop
tests:
  - request: {path: /a/b/c, query: {promo: "79927398713"}}
    expect: {deep_browser: true, valid_promo: true, hero: 0}
`

// A rules file with a hand-written module, uploaded as multipart: validated, tested on the
// composite evaluator, stored with the module (hash-checked), loaded and evaluated.
func TestPutWithHandWrittenModule(t *testing.T) {
	e := newAPI(t)
	mod := buildPathpromo(t)
	body, ct := multipartBody(part{"rules", "promo.yaml", promoRules}, part{"module", "mods/pathpromo.wasm", string(mod)})
	code, ans := e.do("PUT", "/v1/rulesets", body, ct)
	if code != 201 {
		t.Fatalf("PUT: %d %v", code, ans)
	}
	v, err := e.store.Get(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Modules) != 1 || v.Modules[0].Path != "mods/pathpromo.wasm" || !bytes.Equal(v.Modules[0].Data, mod) || v.Meta.Modules[0].Hash != rulestore.Hash(mod) {
		t.Fatalf("stored modules: %+v", v.Meta.Modules)
	}
	var l Loaded
	select {
	case l = <-e.loaded:
	case <-time.After(10 * time.Second):
		t.Fatal("version 1 not loaded")
	}
	ver := l.(*Version)
	res := ver.Manifest().NewResult()
	_, req, _ := promoTest().Sources()
	if err := ver.Evaluator().Evaluate(context.Background(), nil, req, time.Now(), res); err != nil {
		t.Fatal(err)
	}
	if i := ver.Manifest().Segment("valid_promo"); !res.IsMember(i) || res.Variants[0] != 0 {
		t.Fatalf("loaded version: valid_promo %v, hero %d", res.IsMember(i), res.Variants[0])
	}
}

// Every bad upload with modules is a 422 that says what is wrong, and nothing is stored.
func TestBadModuleUploadsAre422(t *testing.T) {
	e := newAPI(t)
	garbage := "\x00asm\x01\x00\x00\x00\xff\xff"
	read := func(name string) string {
		b, err := os.ReadFile("../../wasm/testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name  string
		parts []part
		raw   []byte // instead of parts: a plain body
		want  string
	}{
		{"malformed wasm", []part{{"rules", "promo.yaml", promoRules}, {"module", "mods/pathpromo.wasm", garbage}},
			nil, `promo.yaml:7:5: module \"mods/pathpromo.wasm\": load module \"promo.yaml/mods/pathpromo.wasm\": malformed binary: section 255`},
		{"forbidden import", []part{{"rules", "promo.yaml", promoRules}, {"module", "mods/pathpromo.wasm", read("badimport.wasm")}},
			nil, `import func \"env.foo\" not allowed`},
		{"memory over the cap", []part{{"rules", "promo.yaml", promoRules}, {"module", "mods/pathpromo.wasm", read("hugemem.wasm")}},
			nil, `min 65536 pages (4 Gi) over limit of 512 pages`},
		{"module failing the tests", []part{{"rules", "promo.yaml", promoRules}, {"module", "mods/pathpromo.wasm", read("ok.wasm")}},
			nil, `promo.yaml:18:5: test 1: valid_promo is false, want true`},
		{"module missing", []part{{"rules", "promo.yaml", promoRules}},
			nil, `promo.yaml:7:5: module \"mods/pathpromo.wasm\" was not uploaded`},
		{"module not listed", []part{{"rules", "promo.yaml", "segments:\n  - name: a\n    rule: request.bucket > 5\n"}, {"module", "x.wasm", garbage}},
			nil, `module \"x.wasm\" was uploaded but the rules file's modules section does not list it`},
		{"no rules part", []part{{"module", "x.wasm", garbage}}, nil, "no part named rules"},
		{"unknown part", []part{{"rules", "promo.yaml", promoRules}, {"extra", "x", "y"}}, nil, `unknown part \"extra\"`},
		{"module too big", []part{{"rules", "promo.yaml", promoRules}, {"module", "mods/pathpromo.wasm", strings.Repeat("x", MaxModuleBytes+1)}},
			nil, "over 16777216 bytes"},
		{"oversized rules file", nil, bytes.Repeat([]byte("#"), MaxSourceBytes+1), "the rules file is over 4194304 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, ct := tt.raw, "application/yaml"
			if tt.raw == nil {
				body, ct = multipartBody(tt.parts...)
			}
			code, ans := e.do("PUT", "/v1/rulesets", body, ct)
			b, _ := json.Marshal(ans)
			if code != 422 || !strings.Contains(string(b), tt.want) {
				t.Fatalf("%d %s\nwant 422 mentioning %s", code, b, tt.want)
			}
		})
	}
	if _, err := e.store.Current(context.Background()); !errors.Is(err, rulestore.ErrNotFound) {
		t.Fatalf("after the refusals: current %v, want none", err)
	}
}

// A dry run counts, per segment, the members among sampled stored profiles; segments that need
// a request are listed, not counted. The sample is bounded by ?sample=N.
func TestDryRunCountsSampledProfiles(t *testing.T) {
	e := newAPI(t)
	ctx := context.Background()
	spec, err := profile.NewSpec([]profile.Feature{
		{Kind: profile.FeatureCount, Name: "add_to_cart", Window: 30 * time.Minute},
		{Kind: profile.FeatureCount, Name: "page_view", Window: 30 * time.Minute},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 30 {
		typ := "page_view"
		if i%3 == 0 {
			typ = "add_to_cart" // 10 of 30
		}
		if _, _, err := e.profile.Apply(ctx, event.Event{ID: fmt.Sprint(i), UserID: fmt.Sprintf("u%d", i), Type: typ, TS: now}, spec); err != nil {
			t.Fatal(err)
		}
	}
	src := []byte(`segments:
  - name: carted
    rule: count("add_to_cart", "30m") > 0
  - name: viewer
    rule: count("page_view", "30m") > 0
  - name: mobile
    rule: request.device == "mobile"
`)
	tests := []struct {
		query        string
		size         float64
		carted, view float64
	}{
		{"", 30, 10, 20},
		{"?sample=5", 5, -1, -1},
		{"?sample=0", 0, -1, -1},
	}
	for _, tt := range tests {
		t.Run("sample"+tt.query, func(t *testing.T) {
			code, ans := e.do("POST", "/v1/rulesets/dry-run"+tt.query, src, "application/yaml")
			if code != 200 {
				t.Fatalf("dry run: %d %v", code, ans)
			}
			s, _ := ans["sample"].(map[string]any)
			if tt.size == 0 {
				if s != nil {
					t.Fatalf("sample=0 still sampled: %v", ans)
				}
				return
			}
			counts, _ := s["counts"].(map[string]any)
			if s["size"] != tt.size || counts == nil {
				t.Fatalf("sample %v", ans)
			}
			if tt.carted >= 0 && (counts["carted"] != tt.carted || counts["viewer"] != tt.view) {
				t.Fatalf("counts %v; want carted %v viewer %v", counts, tt.carted, tt.view)
			}
			if c, v := counts["carted"].(float64), counts["viewer"].(float64); c+v != tt.size {
				t.Fatalf("counts %v do not add up to the sample of %v", counts, tt.size)
			}
			if nr, _ := s["needs_request"].([]any); len(nr) != 1 || nr[0] != "mobile" {
				t.Fatalf("needs_request %v", s["needs_request"])
			}
		})
	}
	if code, ans := e.do("POST", "/v1/rulesets/dry-run?sample=x", src, ""); code != 400 {
		t.Fatalf("sample=x: %d %v", code, ans)
	}
	if _, err := e.store.Current(ctx); !errors.Is(err, rulestore.ErrNotFound) {
		t.Fatalf("a dry run stored a version: %v", err)
	}
}

func promoTest() *rules.TestDef {
	return &rules.TestDef{Request: &rules.TestRequest{Path: "/a/b/c", Query: map[string]string{"promo": "79927398713"}}}
}

// A 201 (or an activate's 200) is answered once this origin evaluates with the version, so a
// backend that uploads a ruleset and then sends events has them applied under it (before, an
// event racing the KV watch was applied with the old spec and its new counters were lost).
func TestPutAndActivateAnswerOnceTheVersionIsActiveHere(t *testing.T) {
	e := newAPI(t)
	active := func() uint64 {
		if a := e.mgr.Active(); a != nil {
			return a.Version()
		}
		return 0
	}
	for i, src := range []string{
		"segments:\n  - name: a\n    rule: count(\"x\", \"30m\") > 0\n",
		"segments:\n  - name: b\n    rule: count(\"y\", \"1h\") > 1\n",
	} {
		code, out := e.do("PUT", "/v1/rulesets", []byte(src), "application/yaml")
		if code != http.StatusCreated {
			t.Fatalf("PUT %d: %d %v", i, code, out)
		}
		if out["live"] != true || active() != uint64(out["version"].(float64)) {
			t.Fatalf("PUT answered with live=%v, version %v, while version %d is active", out["live"], out["version"], active())
		}
	}
	code, out := e.do("POST", "/v1/rulesets/1/activate", nil, "")
	if code != http.StatusOK || out["live"] != true || active() != 1 {
		t.Fatalf("rollback answered %d %v while version %d is active", code, out, active())
	}
}
