package identity

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

var (
	keyA = []byte("0123456789abcdef0123456789abcdef-key-A")
	keyB = []byte("fedcba9876543210fedcba9876543210-key-B")
)

func mustSigner(t testing.TB, keys ...[]byte) *Signer {
	t.Helper()
	s, err := NewSigner(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	s := mustSigner(t, keyA)
	seen := make(map[string]bool)
	for range 1000 {
		id, value := s.Issue()
		if len(id) != IDLen || len(value) != ValueLen || !strings.HasPrefix(value, id+".") {
			t.Fatalf("Issue() = %q, %q: wrong shape", id, value)
		}
		got, ok := s.Verify([]byte(value))
		if !ok || string(got) != id {
			t.Fatalf("Verify(%q) = %q, %v; want %q, true", value, got, ok, id)
		}
		if seen[id] {
			t.Fatalf("id %q issued twice", id)
		}
		seen[id] = true
	}
}

// TestSignatureIsDocumentedHMAC recomputes the signature from the documented format with
// crypto/hmac directly, so the format cannot drift from its documentation.
func TestSignatureIsDocumentedHMAC(t *testing.T) {
	s := mustSigner(t, keyA)
	id, value := s.Issue()
	m := hmac.New(sha256.New, keyA)
	m.Write([]byte("segedge_uid.v1." + id))
	want := id + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	if value != want {
		t.Errorf("value = %q, want %q", value, want)
	}
	raw, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(raw) != 16 {
		t.Errorf("id %q is not base64url of 16 bytes (%d bytes, %v)", id, len(raw), err)
	}
}

func TestVerifyRejectsForgeries(t *testing.T) {
	s := mustSigner(t, keyA)
	id, value := s.Issue()
	id2, value2 := s.Issue()
	other := mustSigner(t, keyB)
	_, otherValue := other.Issue()
	flip := func(v string, i int) string {
		b := []byte(v)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	// The last signature character carries 4 data bits and 2 zero padding bits; a character
	// differing only in the padding bits decodes to the same MAC but is not what was issued.
	sameBytesLastChar := func(v string) string {
		b := []byte(v)
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		i := strings.IndexByte(alphabet, b[len(b)-1])
		b[len(b)-1] = alphabet[i^1]
		return string(b)
	}
	forgeries := []struct{ name, value string }{
		{"empty", ""},
		{"id only", id},
		{"id and dot", id + "."},
		{"truncated by one", value[:len(value)-1]},
		{"one byte appended", value + "A"},
		{"padding appended", value + "="},
		{"leading space", " " + value[1:]},
		{"separator replaced", id + ":" + value[IDLen+1:]},
		{"id character changed", flip(value, 0)},
		{"last id character changed", flip(value, IDLen-1)},
		{"signature character changed", flip(value, IDLen+1)},
		{"last signature character changed", flip(value, ValueLen-1)},
		{"non-canonical last signature character", sameBytesLastChar(value)},
		{"signature of another id", id + "." + value2[IDLen+1:]},
		{"another id with this signature", id2 + "." + value[IDLen+1:]},
		{"signed with an unknown key", otherValue},
		{"signature uppercased", id + "." + strings.ToUpper(value[IDLen+1:])},
		{"standard base64 alphabet in id", "+/" + value[2:]},
		{"all zero signature", id + "." + strings.Repeat("A", sigLen)},
		{"garbage of the right length", strings.Repeat("\xff", ValueLen)},
		{"NUL bytes", strings.Repeat("\x00", ValueLen)},
		{"JSON", `{"id":"` + id + `","admin":true}`},
	}
	for _, f := range forgeries {
		t.Run(f.name, func(t *testing.T) {
			if f.value == value {
				t.Fatal("test forgery equals the genuine value")
			}
			if got, ok := s.Verify([]byte(f.value)); ok || got != nil {
				t.Errorf("Verify(%q) = %q, %v; want rejected", f.value, got, ok)
			}
		})
	}
}

func TestKeyRotation(t *testing.T) {
	old := mustSigner(t, keyA)
	_, oldValue := old.Issue()
	rotated := mustSigner(t, keyB, keyA)
	if _, ok := rotated.Verify([]byte(oldValue)); !ok {
		t.Error("a value signed with the old key is rejected while that key is still listed")
	}
	_, newValue := rotated.Issue()
	if _, ok := mustSigner(t, keyB).Verify([]byte(newValue)); !ok {
		t.Error("the rotated signer does not sign with its first key")
	}
	if _, ok := old.Verify([]byte(newValue)); ok {
		t.Error("a signer without the new key accepts its values")
	}
	if _, ok := mustSigner(t, keyB).Verify([]byte(oldValue)); ok {
		t.Error("a value signed with a retired key is accepted")
	}
}

func TestNewSignerAndParseKeys(t *testing.T) {
	long := strings.Repeat("k", MinKeyLen)
	tests := []struct {
		setting string
		keys    int
		wantErr string
	}{
		{long, 1, ""},
		{long + "1, " + long + "2", 2, ""},
		{" " + long + " ", 1, ""},
		{"", 0, "key 1 is 0 bytes"},
		{long[:MinKeyLen-1], 0, "key 1 is 31 bytes"},
		{long + ",short", 0, "key 2 is 5 bytes"},
		{long + ",", 0, "key 2 is 0 bytes"},
	}
	for _, tc := range tests {
		keys, err := ParseKeys(tc.setting)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseKeys(%q) error = %v, want %q", tc.setting, err, tc.wantErr)
			}
			continue
		}
		if err != nil || len(keys) != tc.keys {
			t.Errorf("ParseKeys(%q) = %d keys, %v; want %d", tc.setting, len(keys), err, tc.keys)
		}
	}
	if _, err := NewSigner(); err == nil {
		t.Error("NewSigner() with no key: no error")
	}
	if _, err := NewSigner(keyA, []byte("short")); err == nil {
		t.Error("NewSigner with a short second key: no error")
	}
	if k := RandomKey(); len(k) != MinKeyLen || bytes.Equal(k, RandomKey()) {
		t.Error("RandomKey does not return fresh keys of MinKeyLen bytes")
	}
}

func TestNewSignerCopiesKeys(t *testing.T) {
	key := append([]byte(nil), keyA...)
	s := mustSigner(t, key)
	_, value := s.Issue()
	key[0] ^= 0xff
	if _, ok := s.Verify([]byte(value)); !ok {
		t.Error("changing the caller's key slice changed the signer's key")
	}
}

func TestVerifyDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, so Verify allocates under it")
	}
	s := mustSigner(t, keyB, keyA) // the value below verifies with the second key: the longest path
	_, value := mustSigner(t, keyA).Issue()
	v := []byte(value)
	bad := []byte(value[:ValueLen-1] + "x")
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := s.Verify(v); !ok {
			t.Fatal("genuine value rejected")
		}
		if _, ok := s.Verify(bad); ok {
			t.Fatal("forged value accepted")
		}
	})
	if allocs != 0 {
		t.Errorf("Verify allocates %v times per call, want 0", allocs)
	}
}

func TestAppendSetCookie(t *testing.T) {
	const v = "abc.def"
	tests := []struct {
		name string
		o    CookieOptions
		want string
	}{
		{"defaults", CookieOptions{}, "segedge_uid=abc.def; Path=/; Max-Age=34560000; HttpOnly; SameSite=Lax"},
		{"behind TLS", CookieOptions{Secure: true}, "segedge_uid=abc.def; Path=/; Max-Age=34560000; HttpOnly; SameSite=Lax; Secure"},
		{"custom lifetime and domain", CookieOptions{MaxAge: 90 * time.Minute, Domain: "example.com"},
			"segedge_uid=abc.def; Path=/; Max-Age=5400; HttpOnly; SameSite=Lax; Domain=example.com"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := string(AppendSetCookie(nil, []byte(v), tc.o))
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
			c, err := http.ParseSetCookie(got)
			if err != nil {
				t.Fatalf("net/http cannot parse it: %v", err)
			}
			if c.Name != CookieName || c.Value != v || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode ||
				c.Path != "/" || c.Secure != tc.o.Secure {
				t.Errorf("net/http reads %+v", c)
			}
		})
	}
	buf := make([]byte, 0, 256)
	if allocs := testing.AllocsPerRun(100, func() {
		buf = AppendSetCookie(buf[:0], []byte(v), CookieOptions{Secure: true})
	}); allocs != 0 {
		t.Errorf("AppendSetCookie allocates %v times, want 0", allocs)
	}
}

// TestBucketIsStable pins Bucket's values (computed independently from the documented
// definition): changing them would move users between rollout groups, which the function's
// documentation promises never happens.
func TestBucketIsStable(t *testing.T) {
	for id, want := range map[string]int{"": 3, "a": 36, "user-1": 24, "user-2": 95, "Zm9vYmFyYmF6cXV4cXV1eA": 81} {
		if got := Bucket([]byte(id)); got != want {
			t.Errorf("Bucket(%q) = %d, want %d", id, got, want)
		}
	}
}

func TestBucketSpreadsUsersEvenly(t *testing.T) {
	const n = 100_000
	var counts [100]int
	for i := range n {
		b := Bucket(fmt.Appendf(nil, "user-%d", i)) // sequential ids: the hard case for a weak hash
		if b < 0 || b > 99 {
			t.Fatalf("Bucket = %d, outside 0..99", b)
		}
		counts[b]++
	}
	// Expected 1000 per bucket with a standard deviation of about 31; 150 is ~5 deviations.
	for b, c := range counts {
		if c < 850 || c > 1150 {
			t.Errorf("bucket %d holds %d of %d users, want about %d", b, c, n, n/100)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	s := mustSigner(b, keyA)
	_, value := s.Issue()
	v := []byte(value)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := s.Verify(v); !ok {
			b.Fatal("rejected")
		}
	}
}

func BenchmarkIssue(b *testing.B) {
	s := mustSigner(b, keyA)
	b.ReportAllocs()
	for b.Loop() {
		s.Issue()
	}
}

func BenchmarkBucket(b *testing.B) {
	id := []byte("Zm9vYmFyYmF6cXV4cXV1eA")
	for b.Loop() {
		Bucket(id)
	}
}

func FuzzVerify(f *testing.F) {
	s := mustSigner(f, keyA)
	_, value := s.Issue()
	f.Add([]byte(value))
	f.Add([]byte(value[:ValueLen-1]))
	f.Add([]byte(""))
	f.Add([]byte(strings.Repeat(".", ValueLen)))
	f.Fuzz(func(t *testing.T, v []byte) {
		id, ok := s.Verify(v)
		if !ok {
			if id != nil {
				t.Fatalf("rejected value returned id %q", id)
			}
			return
		}
		// Whatever the fuzzer found, an accepted value must be exactly what the signer issues
		// for that id.
		if !bytes.Equal(id, v[:IDLen]) || s.valueFor(id) != string(v) {
			t.Fatalf("accepted %q, which the signer would not have issued", v)
		}
	})
}
