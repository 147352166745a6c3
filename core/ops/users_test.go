package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/segedge/segedge/core/config"
)

// A user id never reaches a log record unless raw ids are asked for; with a shared key, two
// processes log the same hash for the same user, and different users get different hashes.
func TestUserAttrHashesByDefault(t *testing.T) {
	t.Cleanup(func() { SetUserLogging(false, "") })
	hexRE := regexp.MustCompile(`^[0-9a-f]{16}$`)
	for _, tc := range []struct {
		name string
		raw  bool
		key  string
		id   string
		want func(t *testing.T, got string)
	}{
		{"hashed, random key", false, "", "alice@example.com", func(t *testing.T, got string) {
			if !hexRE.MatchString(got) || strings.Contains(got, "alice") {
				t.Errorf("user = %q, want 16 hex digits", got)
			}
		}},
		{"hashed, shared key", false, "k1", "alice@example.com", func(t *testing.T, got string) {
			// HMAC-SHA256("k1", "alice@example.com"), first 8 bytes.
			if got != "e97a3c597641b2b9" {
				t.Errorf("user = %q, want the keyed hash e97a3c597641b2b9", got)
			}
		}},
		{"hashed, other key", false, "k2", "alice@example.com", func(t *testing.T, got string) {
			if !hexRE.MatchString(got) || got == "e97a3c597641b2b9" {
				t.Errorf("user = %q: another key must give another hash", got)
			}
		}},
		{"raw allowed", true, "", "alice@example.com", func(t *testing.T, got string) {
			if got != "alice@example.com" {
				t.Errorf("user = %q, want the raw id", got)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			SetUserLogging(tc.raw, tc.key)
			var buf bytes.Buffer
			log, err := NewLogger(&buf, "json", "info")
			if err != nil {
				t.Fatal(err)
			}
			log.Info("profile updated", UserAttr(tc.id))
			var rec map[string]any
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatalf("%v: %s", err, buf.Bytes())
			}
			got, _ := rec[UserKey].(string)
			tc.want(t, got)
			if !tc.raw && strings.Contains(buf.String(), tc.id) {
				t.Errorf("raw id in the record: %s", buf.Bytes())
			}
		})
	}
	SetUserLogging(false, "k1")
	if a, b := UserRef("u1"), UserRef("u2"); a == b {
		t.Errorf("two users, one hash %s", a)
	}
	if a, b := UserRef("u1"), UserRef("u1"); a != b {
		t.Errorf("one user, two hashes %s %s", a, b)
	}
}

// Main reads SEGEDGE_LOG_RAW_USER_IDS and SEGEDGE_LOG_USER_KEY (and their flags) for every program.
func TestMainConfiguresUserLogging(t *testing.T) {
	t.Cleanup(func() { SetUserLogging(false, "") })
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"default hashes", nil, nil, "e97a3c597641b2b9"},
		{"flag allows raw ids", nil, []string{"-log-raw-user-ids"}, "alice@example.com"},
		{"env allows raw ids", map[string]string{"SEGEDGE_LOG_RAW_USER_IDS": "true"}, nil, "alice@example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			SetUserLogging(false, "")
			t.Setenv("SEGEDGE_LOG_USER_KEY", "k1")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			format, level := "json", "info"
			var got string
			code := Main(Program{Name: "test", Settings: config.New("test", io.Discard), Validate: func() error { return nil },
				LogFormat: &format, LogLevel: &level,
				Run: func(context.Context, *slog.Logger) error { got = UserRef("alice@example.com"); return nil },
			}, tc.args, io.Discard)
			if code != 0 {
				t.Fatalf("Main = %d", code)
			}
			if got != tc.want {
				t.Errorf("user = %q, want %q", got, tc.want)
			}
		})
	}
}
