package purge

import (
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		body string
		ok   bool
	}{
		{`{"urls":["/shop","https://x.example/a?b=1"]}`, true},
		{`{"prefixes":["/blog/"],"tags":["product-42"]}`, true},
		{`{}`, false},
		{`{"urls":["shop"]}`, false},
		{`{"urls":["ftp://x/a"]}`, false},
		{`{"prefixes":["blog"]}`, false},
		{`{"tags":["a b"]}`, false},
		{`{"tag":["a"]}`, false},
		{`[`, false},
		{`{"tags":[` + strings.Repeat(`"t",`, MaxItems) + `"t"]}`, false},
	}
	for _, tt := range tests {
		_, err := Decode([]byte(tt.body))
		if (err == nil) != tt.ok {
			t.Errorf("Decode(%.60s) = %v, want ok=%v", tt.body, err, tt.ok)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"urls":["/a"],"prefixes":["/b"],"tags":["c"]}`))
	f.Add([]byte(`{"urls":[1]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err == nil && r.Validate() != nil {
			t.Fatal("Decode accepted what Validate refuses")
		}
	})
}
