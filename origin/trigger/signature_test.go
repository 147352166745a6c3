package trigger

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	body := []byte(`{"specversion":"1.0","id":"loyalty/u1/3"}`)
	now := time.Unix(1_800_000_000, 0)
	good := Sign(secret, now, body)
	tests := []struct {
		name      string
		secret    []byte
		header    string
		body      []byte
		tolerance time.Duration
		want      error // nil: verifies
	}{
		{"signed body verifies", secret, good, body, 5 * time.Minute, nil},
		{"tampered body fails", secret, good, []byte(strings.Replace(string(body), "u1", "u2", 1)), 5 * time.Minute, ErrSignatureMismatch},
		{"wrong secret fails", []byte("other"), good, body, 5 * time.Minute, ErrSignatureMismatch},
		{"replayed timestamp fails", secret, Sign(secret, now.Add(-10*time.Minute), body), body, 5 * time.Minute, ErrSignatureExpired},
		{"future timestamp fails", secret, Sign(secret, now.Add(10*time.Minute), body), body, 5 * time.Minute, ErrSignatureExpired},
		{"no tolerance skips the age check", secret, Sign(secret, now.Add(-time.Hour), body), body, 0, nil},
		{"timestamp swapped after signing fails", secret, strings.Replace(good, "t=1800000000", "t=1800000001", 1), body, 5 * time.Minute, ErrSignatureMismatch},
		{"second v1 value for key rotation", secret, "t=1800000000,v1=" + strings.Repeat("ab", 32) + "," + good[strings.Index(good, "v1="):], body, 5 * time.Minute, nil},
		{"unknown scheme ignored", secret, good + ",v0=zz", body, 5 * time.Minute, nil},
		{"empty header", secret, "", body, 0, ErrBadSignatureHeader},
		{"no timestamp", secret, good[strings.Index(good, "v1="):], body, 0, ErrBadSignatureHeader},
		{"no signature", secret, "t=1800000000", body, 0, ErrBadSignatureHeader},
		{"short signature", secret, "t=1800000000,v1=abcd", body, 0, ErrBadSignatureHeader},
		{"not hex", secret, "t=1800000000,v1=" + strings.Repeat("zz", 32), body, 0, ErrBadSignatureHeader},
		{"timestamp not a number", secret, "t=soon," + good[strings.Index(good, "v1="):], body, 0, ErrBadSignatureHeader},
		{"two timestamps", secret, "t=1," + good, body, 0, ErrBadSignatureHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := verifyAt(tc.secret, tc.header, tc.body, tc.tolerance, now)
			if tc.want == nil && err != nil {
				t.Fatalf("Verify(%q) = %v, want nil", tc.header, err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify(%q) = %v, want %v", tc.header, err, tc.want)
			}
		})
	}
}

func TestVerifyUsesTheClock(t *testing.T) {
	secret, body := []byte("k"), []byte("{}")
	if err := Verify(secret, Sign(secret, time.Now(), body), body, time.Minute); err != nil {
		t.Fatalf("fresh signature: %v", err)
	}
	if err := Verify(secret, Sign(secret, time.Now().Add(-time.Hour), body), body, time.Minute); !errors.Is(err, ErrSignatureExpired) {
		t.Fatalf("hour-old signature: %v, want ErrSignatureExpired", err)
	}
}

// FuzzVerify: any header is refused or accepted without a panic, and what Sign makes verifies.
func FuzzVerify(f *testing.F) {
	for _, s := range []string{"", "t=1,v1=00", "t=1800000000,v1=" + strings.Repeat("ab", 32), "t=,v1=", ",,,", "t=-9223372036854775808,v1=" + strings.Repeat("00", 32), "t=99999999999999999999,v1=x"} {
		f.Add([]byte("k"), s, []byte("{}"))
	}
	f.Fuzz(func(t *testing.T, secret []byte, header string, body []byte) {
		_ = Verify(secret, header, body, time.Minute)
		if err := Verify(secret, Sign(secret, time.Now(), body), body, time.Minute); err != nil {
			t.Fatalf("Sign output does not verify: %v", err)
		}
	})
}

func TestParseOn(t *testing.T) {
	tests := []struct {
		in      string
		kind    Kind
		segment string
		bad     bool
	}{
		{in: `enter("high_engagement")`, kind: Enter, segment: "high_engagement"},
		{in: ` exit( "cart_abandoner" ) `, kind: Exit, segment: "cart_abandoner"},
		{in: `enter('x')`, bad: true},
		{in: "enter(`x`)", bad: true},
		{in: `enter("")`, bad: true},
		{in: `enter(x)`, bad: true},
		{in: `score("engagement") > 80`, bad: true},
		{in: `leave("x")`, bad: true},
		{in: `enter("x"`, bad: true},
		{in: ``, bad: true},
	}
	for _, tc := range tests {
		k, seg, err := ParseOn(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseOn(%q) = %v %q, want an error", tc.in, k, seg)
			}
			continue
		}
		if err != nil || k != tc.kind || seg != tc.segment {
			t.Errorf("ParseOn(%q) = %v %q %v, want %v %q", tc.in, k, seg, err, tc.kind, tc.segment)
		}
	}
}

func FuzzParseOn(f *testing.F) {
	for _, s := range []string{`enter("a")`, `exit("b")`, `enter(")`, `(`, `)`, `enter("\x")`, `exit("\u00e9")`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, seg, err := ParseOn(s)
		if err == nil && ((k != Enter && k != Exit) || seg == "") {
			t.Fatalf("ParseOn(%q) accepted %v %q", s, k, seg)
		}
	})
}
