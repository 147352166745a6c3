// Package rulescli is `origin rules …`: check a rules file locally (validate, test) and manage
// the rulesets of a running origin (push, list, show, diff, rollback), in the spirit of
// `promtool check rules` / `promtool test rules`.
package rulescli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/wasm"
	"github.com/segedge/segedge/wasm/ruleset"
)

const usage = `usage: origin rules <command> [flags] [args]

  validate FILE          check schema, CEL types and compile to wasm
  test FILE              run the file's tests on cel-go and on the compiled module
  push FILE              upload to the origin (-m message, -if-match VERSION), with the
                         hand-written modules the file lists (paths relative to FILE)
  dry-run FILE           compile and test at the origin, and count each segment's members
                         among up to -sample N stored profiles (default 1000)
  list                   list stored versions
  show VERSION           print a version's source
  diff A B               line diff of two versions' sources
  rollback VERSION       make VERSION current again

Flags for commands that talk to an origin: -origin URL (ORIGIN_URL, default http://127.0.0.1:7070),
-token TOKEN (SEGEDGE_ADMIN_TOKEN) and -timeout (default 2m).
`

// Main runs the rules command and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("rules "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	origin := fs.String("origin", envOr("ORIGIN_URL", "http://127.0.0.1:7070"), "origin URL")
	token := fs.String("token", os.Getenv("SEGEDGE_ADMIN_TOKEN"), "admin token")
	msg := fs.String("m", "", "message stored with the version (push)")
	ifMatch := fs.String("if-match", "", "push only if this version is current (push, rollback)")
	sample := fs.Int("sample", 1000, "profiles to evaluate (dry-run)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the origin (it compiles and tests hand-written modules before it answers)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := &client{base: strings.TrimRight(*origin, "/"), token: *token, out: stdout, timeout: *timeout}
	var err error
	switch cmd {
	case "validate":
		err = withFile(fs, func(name string, src []byte) error { return validate(stdout, name, src, false) })
	case "test":
		err = withFile(fs, func(name string, src []byte) error { return validate(stdout, name, src, true) })
	case "push":
		err = withFile(fs, func(name string, src []byte) error { return c.push(name, src, *msg, *ifMatch) })
	case "dry-run":
		err = withFile(fs, func(name string, src []byte) error { return c.dryRun(name, src, *sample) })
	case "list":
		err = c.do("GET", "/v1/rulesets", nil, "", true)
	case "show":
		err = needArgs(fs, 1, func(a []string) error { return c.do("GET", "/v1/rulesets/"+a[0]+"?source=1", nil, "", false) })
	case "diff":
		err = needArgs(fs, 2, func(a []string) error { return c.diff(a[0], a[1]) })
	case "rollback":
		err = needArgs(fs, 1, func(a []string) error { return c.do("POST", "/v1/rulesets/"+a[0]+"/activate", nil, *ifMatch, true) })
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "rules %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func withFile(fs *flag.FlagSet, f func(name string, src []byte) error) error {
	return needArgs(fs, 1, func(a []string) error {
		src, err := os.ReadFile(a[0])
		if err != nil {
			return err
		}
		return f(a[0], src)
	})
}

func needArgs(fs *flag.FlagSet, n int, f func([]string) error) error {
	if fs.NArg() != n {
		return fmt.Errorf("want %d argument(s), got %d", n, fs.NArg())
	}
	return f(fs.Args())
}

// validate compiles the file and, with tests, runs them on both evaluators.
func validate(out io.Writer, name string, src []byte, tests bool) error {
	f, err := rules.Parse(name, src)
	if err != nil {
		return err
	}
	rs, err := rules.Compile(f)
	if err != nil {
		return err
	}
	mods, err := readModules(name, f)
	if err != nil {
		return err
	}
	if err := rs.AttachModules(name, mods); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %d segments, %d slots, module %d bytes", name, len(rs.Manifest.Segments), len(rs.Manifest.Slots), len(rs.Module))
	if len(rs.Modules) > 0 {
		fmt.Fprintf(out, ", %d hand-written module(s)", len(rs.Modules))
	}
	fmt.Fprintln(out, ": valid")
	if !tests {
		return nil
	}
	if len(f.Tests) == 0 {
		fmt.Fprintf(out, "%s: no tests\n", name)
		return nil
	}
	if err := rules.RunTests(f, rs); err != nil {
		fmt.Fprintf(out, "FAIL (reference evaluator, cel-go)\n%v\n", err)
		return fmt.Errorf("tests failed")
	}
	fmt.Fprintf(out, "PASS %d tests on the reference evaluator (cel-go)\n", len(f.Tests))
	ctx := context.Background()
	rt, err := wasm.NewRuntime(ctx, wasm.Config{})
	if err != nil {
		return err
	}
	defer rt.Close(ctx)
	ev, err := ruleset.Load(ctx, rt, name, rs)
	if err != nil {
		return err
	}
	defer ev.Close()
	if err := ev.RunTests(ctx, f); err != nil {
		fmt.Fprintf(out, "FAIL (compiled module)\n%v\n", err)
		return fmt.Errorf("tests failed")
	}
	fmt.Fprintf(out, "PASS %d tests on the compiled module (wasm sandbox)\n", len(f.Tests))
	return nil
}

type client struct {
	base, token string
	out         io.Writer
	timeout     time.Duration
}

func (c *client) request(method, path string, body []byte, ifMatch string) (int, []byte, error) {
	return c.requestType(method, path, body, "", ifMatch)
}

func (c *client) requestType(method, path string, body []byte, contentType, ifMatch string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if ifMatch != "" {
		req.Header.Set("If-Match", `"`+ifMatch+`"`)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	return res.StatusCode, b, err
}

func (c *client) do(method, path string, body []byte, ifMatch string, isJSON bool) error {
	return c.doType(method, path, body, "", ifMatch)
}

func (c *client) doType(method, path string, body []byte, contentType, ifMatch string) error {
	code, b, err := c.requestType(method, path, body, contentType, ifMatch)
	if err != nil {
		return err
	}
	c.out.Write(b)
	if code >= 300 {
		return fmt.Errorf("origin answered %d", code)
	}
	return nil
}

func (c *client) push(name string, src []byte, msg, ifMatch string) error {
	body, ct, err := uploadBody(name, src)
	if err != nil {
		return err
	}
	path := "/v1/rulesets?file=" + urlQuery(name)
	if msg != "" {
		path += "&message=" + urlQuery(msg)
	}
	return c.doType("PUT", path, body, ct, ifMatch)
}

func (c *client) dryRun(name string, src []byte, sample int) error {
	body, ct, err := uploadBody(name, src)
	if err != nil {
		return err
	}
	return c.doType("POST", fmt.Sprintf("/v1/rulesets/dry-run?file=%s&sample=%d", urlQuery(name), sample), body, ct, "")
}

// readModules reads the hand-written modules a rules file lists, relative to the file's
// directory (absolute paths as they are), keyed by the path as written.
func readModules(name string, f *rules.File) (map[string][]byte, error) {
	mods := map[string][]byte{}
	for _, md := range f.Modules {
		p := md.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(name), filepath.FromSlash(p))
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s:%d:%d: module %q: %w", name, md.Pos.Line, md.Pos.Col, md.Path, err)
		}
		mods[md.Path] = b
	}
	return mods, nil
}

// uploadBody is the rules file as the body, or, when it lists hand-written modules, a
// multipart/form-data body: part "rules" (filename: FILE as given) and one part "module"
// per module (filename: its path as the rules file writes it), as PUT /v1/rulesets reads it.
func uploadBody(name string, src []byte) ([]byte, string, error) {
	f, err := rules.Parse(name, src)
	if err != nil || len(f.Modules) == 0 {
		return src, "application/yaml", nil // the origin reports parse errors with positions
	}
	mods, err := readModules(name, f)
	if err != nil {
		return nil, "", err
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	part := func(field, filename string, b []byte) error {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, field, filename))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err == nil {
			_, err = w.Write(b)
		}
		return err
	}
	if err := part("rules", name, src); err != nil {
		return nil, "", err
	}
	for _, md := range f.Modules {
		if err := part("module", md.Path, mods[md.Path]); err != nil {
			return nil, "", err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), mw.FormDataContentType(), nil
}

func urlQuery(s string) string {
	b, _ := json.Marshal(s)
	r := strings.NewReplacer(" ", "%20", "&", "%26", "#", "%23", "?", "%3F", "+", "%2B")
	return r.Replace(strings.Trim(string(b), `"`))
}

func (c *client) diff(a, b string) error {
	get := func(v string) ([]string, error) {
		code, body, err := c.request("GET", "/v1/rulesets/"+v+"?source=1", nil, "")
		if err != nil {
			return nil, err
		}
		if code != 200 {
			return nil, fmt.Errorf("version %s: origin answered %d", v, code)
		}
		return strings.Split(string(body), "\n"), nil
	}
	la, err := get(a)
	if err != nil {
		return err
	}
	lb, err := get(b)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "--- version %s\n+++ version %s\n", a, b)
	for _, l := range lineDiff(la, lb) {
		fmt.Fprintln(c.out, l)
	}
	return nil
}

// lineDiff is a longest-common-subsequence diff; rules files are small.
func lineDiff(a, b []string) []string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			out = append(out, " "+a[i])
			i++
			j++
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, "-"+a[i])
			i++
		default:
			out = append(out, "+"+b[j])
			j++
		}
	}
	for ; i < n; i++ {
		out = append(out, "-"+a[i])
	}
	for ; j < m; j++ {
		out = append(out, "+"+b[j])
	}
	return out
}
