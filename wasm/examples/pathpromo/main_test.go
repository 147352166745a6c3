package main

import "testing"

func TestPathDepth(t *testing.T) {
	for path, want := range map[string]int{
		"":                 0,
		"/":                0,
		"/shoes":           1,
		"/shoes//running/": 2,
		"/a/b/c":           3,
		"/a/b?x=/c/d":      2,
		"/a/b#/c/d":        2,
	} {
		if got := pathDepth(path); got != want {
			t.Errorf("pathDepth(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestLuhn(t *testing.T) {
	tests := []struct {
		code    string
		valid   bool
		wantErr bool
	}{
		{"79927398713", true, false},
		{"7992 7398 713", true, false},
		{"79927398710", false, false},
		{"0", false, false}, // too short
		{"", false, false},
		{"12345678901234567897", false, false}, // too long
		{"7992-7398-713", false, true},
	}
	for _, tt := range tests {
		valid, err := luhn(tt.code)
		if valid != tt.valid || (err != nil) != tt.wantErr {
			t.Errorf("luhn(%q) = %v, %v; want %v, error %v", tt.code, valid, err, tt.valid, tt.wantErr)
		}
	}
}
