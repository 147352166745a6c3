package trigger

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries the webhook signature: t=<unix seconds>,v1=<hex HMAC-SHA256>.
const SignatureHeader = "X-Segedge-Signature"

// DeliveryHeader carries the firing's stable id; a receiver dedupes redeliveries by it.
const DeliveryHeader = "X-Segedge-Delivery"

// Sign returns the X-Segedge-Signature value for body at time t: the HMAC-SHA256 of
// "<unix seconds>.<body>" under secret. Signing the timestamp with the body lets a receiver
// refuse replays of an old delivery.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors returned by Verify, so a receiver can tell a forgery from a stale delivery.
var (
	ErrBadSignatureHeader = errors.New("malformed signature header")
	ErrSignatureMismatch  = errors.New("signature does not match")
	ErrSignatureExpired   = errors.New("signature timestamp outside tolerance")
)

// Verify checks an X-Segedge-Signature header against body, for receivers and tests. The
// header may carry several v1 values (e.g. while a secret is rotated); one matching is enough.
// A timestamp further than tolerance from now (either way) is refused; tolerance <= 0 skips
// that check.
func Verify(secret []byte, header string, body []byte, tolerance time.Duration) error {
	return verifyAt(secret, header, body, tolerance, time.Now())
}

func verifyAt(secret []byte, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("%w: %q has no '='", ErrBadSignatureHeader, part)
		}
		switch k {
		case "t":
			if ts != "" {
				return fmt.Errorf("%w: two timestamps", ErrBadSignatureHeader)
			}
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != sha256.Size {
				return fmt.Errorf("%w: v1 is not a hex SHA-256", ErrBadSignatureHeader)
			}
			sigs = append(sigs, sig)
		}
		// Unknown keys are ignored, so a future scheme can be added beside v1.
	}
	if ts == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: want t=<unix seconds>,v1=<hex>", ErrBadSignatureHeader)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: timestamp %q", ErrBadSignatureHeader, ts)
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrSignatureMismatch
	}
	if tolerance > 0 {
		age := now.Sub(time.Unix(sec, 0))
		if age > tolerance || age < -tolerance {
			return fmt.Errorf("%w: signed %s ago, tolerance %s", ErrSignatureExpired, age.Truncate(time.Second), tolerance)
		}
	}
	return nil
}
