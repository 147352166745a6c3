package page

import (
	"os"
	"testing"
)

// FuzzCompile checks that no input makes Compile panic, that every compiled page passes
// through unchanged with no variants, and that a marker variant lands once per occurrence of
// its slot and changes nothing else (checkInvariants). Seeds: the odd-markup table, and, when
// the shared corpus is present, every html5lib tokenizer input, bare and wrapped in a slot.
func FuzzCompile(f *testing.F) {
	for _, tc := range oddDocuments {
		f.Add([]byte(tc.doc))
	}
	dir := findCorpus()
	if dir == "" && os.Getenv("SEGEDGE_REQUIRE_CORPUS") == "1" {
		f.Fatal("HTML corpus <repo>/../shared/corpus not found and SEGEDGE_REQUIRE_CORPUS=1")
	}
	if dir != "" {
		inputs, err := readTokenizerInputs(dir)
		if err != nil {
			f.Fatal(err)
		}
		for _, in := range inputs {
			f.Add([]byte(in.Input))
			f.Add([]byte(`<div data-seg-slot="w">` + in.Input + `</div>`))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkInvariants(t, Compile(body))
	})
}

// FuzzSlotsAgreeWithParser checks, for every slot Compile finds in a fuzzed document, that the
// HTML parser (x/net/html's tree builder) puts exactly the default inside the slot element,
// and exactly a spliced variant after splicing. Seeds: the structural and odd-markup tables.
func FuzzSlotsAgreeWithParser(f *testing.F) {
	for _, tc := range structuralDocuments {
		f.Add([]byte(tc.doc))
	}
	for _, tc := range oddDocuments {
		f.Add([]byte(tc.doc))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p := Compile(body)
		for i := range p.Slots() {
			if msg := browserDisagrees(p, i); msg != "" {
				t.Fatalf("slot %q: %s", p.Slots()[i], msg)
			}
		}
	})
}
