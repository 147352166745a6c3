package rules

import (
	"encoding/json"
	"os"
	"slices"
	"testing"
)

// The JSON Schema that editors use must name the sections the parser accepts.
func TestSchemaNamesTheParsersSections(t *testing.T) {
	b, err := os.ReadFile("rules.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	var got []string
	for k := range s.Properties {
		got = append(got, k)
	}
	slices.Sort(got)
	want := []string{"modules", "scores", "segments", "slots", "tests", "triggers"}
	if !slices.Equal(got, want) {
		t.Fatalf("schema sections %v, parser sections %v", got, want)
	}
	for _, sec := range want {
		if _, err := Parse("x.yaml", []byte(sec+": {bogus: 1}\n")); err == nil && sec != "scores" {
			t.Errorf("parser accepted a malformed %s section", sec)
		}
	}
	if _, err := Parse("x.yaml", []byte("nonsense: []\n")); err == nil {
		t.Error("parser accepted a section the schema does not name")
	}
}
