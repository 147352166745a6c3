package page

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// corpusDir returns the shared HTML corpus (<repo>/../shared/corpus). It skips the test when
// the corpus is absent (a fresh clone), unless SEGEDGE_REQUIRE_CORPUS=1, where it fails.
func corpusDir(tb testing.TB) string {
	tb.Helper()
	if c := findCorpus(); c != "" {
		return c
	}
	if os.Getenv("SEGEDGE_REQUIRE_CORPUS") == "1" {
		tb.Fatal("HTML corpus <repo>/../shared/corpus not found and SEGEDGE_REQUIRE_CORPUS=1")
	}
	tb.Skip("HTML corpus <repo>/../shared/corpus not found")
	return ""
}

// findCorpus walks up from the package directory to the module root and returns
// <root>/../shared/corpus, or "" when it does not exist.
func findCorpus() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			dir = ""
			break
		}
		dir = parent
	}
	if dir == "" {
		return ""
	}
	c := filepath.Join(dir, "..", "shared", "corpus")
	if _, err := os.Stat(filepath.Join(c, "README.md")); err != nil {
		return ""
	}
	return c
}

var corpusPageNames = []string{"cloudflare.com.html", "ecma402-spec.html", "html-parsing-spec.html"}

// corpusPages returns the three real pages by file name.
func corpusPages(tb testing.TB) map[string][]byte {
	dir := corpusDir(tb)
	pages := make(map[string][]byte)
	for _, name := range corpusPageNames {
		b, err := os.ReadFile(filepath.Join(dir, "pages", name))
		if err != nil {
			tb.Fatalf("read corpus page: %v", err)
		}
		pages[name] = b
	}
	return pages
}

type tokenizerInput struct {
	Source      string `json:"source"`
	Description string `json:"description"`
	Input       string `json:"input"`
}

// corpusTokenizerInputs returns the html5lib tokenizer test inputs.
func corpusTokenizerInputs(tb testing.TB) []tokenizerInput {
	tb.Helper()
	in, err := readTokenizerInputs(corpusDir(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return in
}

func readTokenizerInputs(dir string) ([]tokenizerInput, error) {
	f, err := os.Open(filepath.Join(dir, "html5lib-tokenizer.ndjson"))
	if err != nil {
		return nil, fmt.Errorf("open tokenizer corpus: %w", err)
	}
	defer f.Close()
	var out []tokenizerInput
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var in tokenizerInput
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			return nil, fmt.Errorf("tokenizer corpus line %d: %w", len(out)+1, err)
		}
		out = append(out, in)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read tokenizer corpus: %w", err)
	}
	return out, nil
}
