package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestBadRulesetUploadsAreRefusedPreciselyAndChangeNothing(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL)
	put := func(body, ifMatch string) (int, string) {
		req, _ := http.NewRequest("PUT", sys.originURL+"/v1/rulesets", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer admin-secret")
		if strings.HasPrefix(body, "--b\r\n") {
			req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		}
		if ifMatch != "" {
			req.Header.Set("If-Match", ifMatch)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.StatusCode, string(b)
	}
	good := "segments:\n  - name: a\n    rule: count(\"x\", \"30m\") > 0\n"
	if code, body := put(good, ""); code != 201 {
		t.Fatalf("good upload: %d %s", code, body)
	}
	tests := []struct {
		name, body string
		code       int
		want       string
	}{
		{"syntax", "segments:\n  - name: a\n    rule: count(\"x\", \"30m\" > \n", 422, "rules.yaml:3"},
		{"type", "segments:\n  - name: a\n    rule: count(\"x\", \"30m\") == \"many\"\n", 422, "rules.yaml:3"},
		{"window", "segments:\n  - name: a\n    rule: count(\"x\", \"30x\") > 0\n", 422, "unknown event window"},
		{"cycle", "segments:\n  - name: a\n    rule: segment(\"b\")\n  - name: b\n    rule: segment(\"a\")\n", 422, "cycle"},
		{"failing test", "segments:\n  - name: a\n    rule: count(\"x\", \"30m\") > 0\ntests:\n  - profile: {counts: {x/30m: 0}}\n    expect: {a: true}\n", 422, "test"},
		{"unknown slot segment", "segments:\n  - name: a\n    rule: request.bucket > 5\nslots:\n  - name: hero\n    variants:\n      - when: nope\n        html: x\n", 422, "nope"},
		{"unknown field", "segments:\n  - name: a\n    rule: request.bucket > 5\n    colour: red\n", 422, "colour"},
		{"empty", "", 422, "empty"},
		{"oversized", strings.Repeat("#", 5<<20), 422, "the rules file is over 4194304 bytes"},
		{"bad wasm", "--b\r\nContent-Disposition: form-data; name=\"rules\"; filename=\"rules.yaml\"\r\n\r\n" +
			"segments:\n  - name: a\n    rule: request.bucket > 5\nmodules:\n  - path: m.wasm\n    segments: [b]\n\r\n" +
			"--b\r\nContent-Disposition: form-data; name=\"module\"; filename=\"m.wasm\"\r\n\r\nnot wasm\r\n--b--\r\n",
			422, `rules.yaml:5:5: module \"m.wasm\": load module \"rules.yaml/m.wasm\": malformed binary`},
	}
	for _, tt := range tests {
		code, body := put(tt.body, "")
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %d %.300s; want %d mentioning %q", tt.name, code, body, tt.code, tt.want)
		}
	}
	// A stale If-Match is refused; nothing changed: version 1 is still current.
	if code, _ := put(good, `"7"`); code != 412 {
		t.Errorf("stale If-Match: %d, want 412", code)
	}
	if cur, n := rulesetHistory(t, sys); cur != 1 || n != 1 {
		t.Fatalf("after the refusals: current %d, %d versions; want 1 and 1", cur, n)
	}
}
