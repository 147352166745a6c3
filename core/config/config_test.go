package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestFlagBeatsEnvBeatsDefault(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"default", nil, nil, "127.0.0.1:7070"},
		{"env", nil, map[string]string{"ORIGIN_ADDR": ":9000"}, ":9000"},
		{"flag wins", []string{"-origin-addr", ":9001"}, map[string]string{"ORIGIN_ADDR": ":9000"}, ":9001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addr string
			s := New("origin", &bytes.Buffer{})
			s.String(&addr, "origin-addr", "ORIGIN_ADDR", "127.0.0.1:7070", "listen address")
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			if err := s.Parse(tt.args, lookup); err != nil {
				t.Fatal(err)
			}
			if addr != tt.want {
				t.Fatalf("addr = %q, want %q", addr, tt.want)
			}
		})
	}
}

func TestBadEnvValueNamesTheVariable(t *testing.T) {
	var d time.Duration
	s := New("edge", &bytes.Buffer{})
	s.Duration(&d, "timeout", "SEGEDGE_TIMEOUT", time.Second, "")
	err := s.Parse(nil, func(string) (string, bool) { return "soon", true })
	if err == nil || !strings.Contains(err.Error(), "SEGEDGE_TIMEOUT") {
		t.Fatalf("err = %v, want it to name SEGEDGE_TIMEOUT", err)
	}
}

func TestUsageListsVariables(t *testing.T) {
	var out bytes.Buffer
	var u string
	s := New("edge", &out)
	s.String(&u, "nats-url", "NATS_URL", "", "the NATS server")
	if err := s.Parse([]string{"-h"}, func(string) (string, bool) { return "", false }); err != ErrHelp {
		t.Fatalf("err = %v, want ErrHelp", err)
	}
	if !strings.Contains(out.String(), "-nats-url (env NATS_URL") {
		t.Fatalf("usage does not name the variable:\n%s", out.String())
	}
}

func TestCheckURL(t *testing.T) {
	tests := []struct {
		raw string
		ok  bool
	}{
		{"nats://127.0.0.1:4222", true},
		{"redis://127.0.0.1:6379/0", true},
		{"127.0.0.1:4222", false},
		{"http://%zz", false},
		{"ftp://x:1", false},
		{"REDIS://127.0.0.1:6379", true}, // schemes are case-insensitive (the Redis store's ParseURL agrees)
	}
	for _, tt := range tests {
		err := CheckURL("NATS_URL", tt.raw, "nats", "redis", "tls", "rediss")
		if (err == nil) != tt.ok {
			t.Errorf("CheckURL(%q) = %v, want ok=%v", tt.raw, err, tt.ok)
		}
	}
}

// RedactURL finds the password by the last '@', so that a password holding '/', '?', '#', '@'
// or ':' is hidden whole, also when the URL does not parse or url.Parse splits it elsewhere.
func TestRedactURL(t *testing.T) {
	for raw, want := range map[string]string{
		"redis://127.0.0.1:6379/0":                    "redis://127.0.0.1:6379/0",
		"redis://user@h:1":                            "redis://user@h:1",
		"redis://user:pw@h:1/0?a=b":                   "redis://user:xxxxx@h:1/0?a=b",
		"redis://:pw@h:1":                             "redis://:xxxxx@h:1",
		"redis://user:s3cr/et@h":                      "redis://user:xxxxx@h",
		"redis://user:s3cr?et@h":                      "redis://user:xxxxx@h",
		"redis://user:s3cr#et@h":                      "redis://user:xxxxx@h",
		"redis://user:s3@c:r@h:notaport":              "redis://user:xxxxx@h:notaport",
		"redis+cluster://u:p/w@h1:7000,h2:7001?x=1":   "redis+cluster://u:xxxxx@h1:7000,h2:7001?x=1",
		"redis://s3cr/et@h":                           "redis://xxxxx@h",
		"user:pw@h:1":                                 "user:xxxxx@h:1",
		"redis://h:1/0?name=a@b":                      "redis://h:xxxxx@b", // an '@' in the query: too much hidden, never too little
		"nats://127.0.0.1:4222":                       "nats://127.0.0.1:4222",
		"https://user:pw@collector:4318/v1/traces?x=": "https://user:xxxxx@collector:4318/v1/traces?x=",
	} {
		if got := RedactURL(raw); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", raw, got, want)
		}
	}
}

// The programs print CheckURL's errors at startup: they show no password, whole or in part.
func TestCheckURLErrorsHideThePassword(t *testing.T) {
	for raw, pass := range map[string]string{
		"redis://user:Sec1Ret2@h:notaport":   "Sec1Ret2",
		"redis://user:Sec1/Ret2@h:6379":      "Sec1/Ret2",
		"redis://user:Sec1?Ret2@h:6379":      "Sec1?Ret2",
		"redis://user:Sec1@Ret2@h:notaport":  "Sec1@Ret2",
		"redis://user:Sec1:Ret2@h:notaport":  "Sec1:Ret2",
		"redis://user:Sec1%zzRet2@h:6379":    "Sec1%zzRet2",
		"ftp://user:Sec1Ret2@h:1":            "Sec1Ret2",
		"redis://user:Sec1Ret2@/0":           "Sec1Ret2",
		"user:Sec1Ret2@h:6379":               "Sec1Ret2",
		"redis://user:Sec1/Ret2@h:notaport/": "Sec1/Ret2",
	} {
		err := CheckURL("REDIS_URL", raw, "redis", "rediss")
		if err == nil {
			t.Errorf("CheckURL(%q) accepted it, want an error", raw)
			continue
		}
		for _, piece := range append(strings.FieldsFunc(pass, func(r rune) bool { return strings.ContainsRune("/?#@:%", r) }), pass) {
			if strings.Contains(err.Error(), piece) {
				t.Errorf("CheckURL error shows %q of the password %q: %v", piece, pass, err)
			}
		}
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:8080": true, ":0": true, "8080": false, "x:y": false, "h:70000": false} {
		if err := CheckAddr("EDGE_ADDR", addr); (err == nil) != ok {
			t.Errorf("CheckAddr(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}
