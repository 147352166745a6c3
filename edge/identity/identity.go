// Package identity issues and verifies the edge's user cookie, segedge_uid.
//
// The edge identifies visitors itself, without asking the origin: the cookie carries a random
// 128-bit id and an HMAC-SHA256 of it under a key only the edges know, so a visitor cannot
// choose or change their id (and with it their profile, segments and rollout bucket), and
// verifying a cookie is local, constant-time and allocation-free on every request.
//
// Value format (66 bytes): <id>.<sig>
//
//	id  = base64url, no padding, of 16 random bytes (22 characters); this text is the user id
//	sig = base64url, no padding, of HMAC-SHA256(key, "segedge_uid.v1." + id) (43 characters)
//
// Key rotation: a Signer holds a list of keys; it signs with the first and accepts a value
// signed with any of them. Roll a new key in by putting it first while the old one is still
// listed, and drop the old one after the cookie lifetime, or earlier to log everyone out.
package identity

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// CookieName is the name of the edge's user cookie.
	CookieName = "segedge_uid"
	// MinKeyLen is the shortest key accepted, in bytes.
	MinKeyLen = 32
	// DefaultMaxAge is the cookie lifetime when none is configured: 400 days, the longest
	// that browsers honour (RFC 6265bis caps Max-Age there).
	DefaultMaxAge = 400 * 24 * time.Hour

	// IDLen is the length of the textual user id; ValueLen that of a whole cookie value.
	IDLen    = 22
	sigLen   = 43
	ValueLen = IDLen + 1 + sigLen

	macContext = "segedge_uid.v1."
)

var (
	enc       = base64.RawURLEncoding
	macPrefix = []byte(macContext)
)

// Signer issues and verifies cookie values. It is safe for concurrent use.
type Signer struct {
	// macs[i] pools HMAC states keyed with key i: an HMAC keeps state and is not safe for
	// concurrent use, and building one per request would allocate.
	macs []sync.Pool
}

// macState is one pooled HMAC with scratch space for its output, so that neither Sum nor the
// encoding of the signature allocates.
type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
	sig [sigLen]byte
}

// NewSigner returns a Signer that signs with keys[0] and accepts any of keys. Each key must be
// at least MinKeyLen bytes long.
func NewSigner(keys ...[]byte) (*Signer, error) {
	if len(keys) == 0 {
		return nil, errors.New("identity: no cookie key")
	}
	s := &Signer{macs: make([]sync.Pool, len(keys))}
	for i, k := range keys {
		if len(k) < MinKeyLen {
			return nil, fmt.Errorf("identity: cookie key %d is %d bytes, want at least %d", i+1, len(k), MinKeyLen)
		}
		key := append([]byte(nil), k...)
		s.macs[i].New = func() any { return &macState{h: hmac.New(sha256.New, key)} }
	}
	return s, nil
}

// ParseKeys splits a SEGEDGE_COOKIE_KEY setting into keys: one key, or several separated by
// commas (the first signs, all verify); spaces around each key are ignored. A key therefore
// cannot contain a comma.
func ParseKeys(setting string) ([][]byte, error) {
	var keys [][]byte
	for i, k := range strings.Split(setting, ",") {
		k = strings.TrimSpace(k)
		if len(k) < MinKeyLen {
			return nil, fmt.Errorf("parse cookie keys: key %d is %d bytes, want at least %d", i+1, len(k), MinKeyLen)
		}
		keys = append(keys, []byte(k))
	}
	return keys, nil
}

// RandomKey returns a fresh random key, for an edge started without a configured one (its
// cookies then do not survive a restart).
func RandomKey() []byte {
	k := make([]byte, MinKeyLen)
	_, _ = rand.Read(k) // crypto/rand.Read never returns an error (it crashes the program instead)
	return k
}

// sign writes the signature of id under key i into st.sig.
func (s *Signer) sign(i int, id []byte) *macState {
	st := s.macs[i].Get().(*macState)
	st.h.Reset()
	st.h.Write(macPrefix)
	st.h.Write(id)
	enc.Encode(st.sig[:], st.h.Sum(st.sum[:0]))
	return st
}

// Issue returns a new random user id and the cookie value carrying it.
func (s *Signer) Issue() (id string, value string) {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	var id22 [IDLen]byte
	enc.Encode(id22[:], raw[:])
	value = s.valueFor(id22[:])
	return value[:IDLen], value
}

// valueFor returns the cookie value for an id text, signed with the first key.
func (s *Signer) valueFor(id []byte) string {
	v := make([]byte, 0, len(id)+1+sigLen)
	v = append(append(v, id...), '.')
	st := s.sign(0, id)
	v = append(v, st.sig[:]...)
	s.macs[0].Put(st)
	return string(v)
}

// Verify checks a cookie value and returns the user id it carries, a sub-slice of value (no
// copy; the caller copies it if value's memory is reused). Anything but an untampered value
// signed with one of the keys (wrong length, bad characters, a signature made with another
// key or for another id) returns ok == false. The signature is compared in constant time, and
// Verify does not allocate.
func (s *Signer) Verify(value []byte) (id []byte, ok bool) {
	if len(value) != ValueLen || value[IDLen] != '.' || !isIDText(value[:IDLen]) {
		return nil, false
	}
	id, sig := value[:IDLen], value[IDLen+1:]
	for i := range s.macs {
		st := s.sign(i, id)
		match := hmac.Equal(st.sig[:], sig)
		s.macs[i].Put(st)
		if match {
			return id, true
		}
	}
	return nil, false
}

// isIDText reports whether b is in the alphabet of issued ids (base64url). Signatures are
// checked as text against the canonical encoding, so they need no such check.
func isIDText(b []byte) bool {
	for _, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// CookieOptions are the attributes of the Set-Cookie header.
type CookieOptions struct {
	MaxAge time.Duration // 0 means DefaultMaxAge
	Secure bool          // set when the edge is reached over TLS
	Domain string        // optional, e.g. "example.com" to share the cookie with subdomains
}

// AppendSetCookie appends the value of a Set-Cookie header for cookie value v:
//
//	segedge_uid=<v>; Path=/; Max-Age=34560000; HttpOnly; SameSite=Lax[; Secure][; Domain=d]
//
// HttpOnly keeps page scripts away from the id; SameSite=Lax sends it on top-level
// navigations from other sites (so a visitor arriving from a search engine is recognised) but
// not on cross-site subrequests. It does not allocate when dst has room.
func AppendSetCookie(dst []byte, v []byte, o CookieOptions) []byte {
	maxAge := o.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	dst = append(dst, CookieName+"="...)
	dst = append(dst, v...)
	dst = append(dst, "; Path=/; Max-Age="...)
	dst = strconv.AppendInt(dst, int64(maxAge/time.Second), 10)
	dst = append(dst, "; HttpOnly; SameSite=Lax"...)
	if o.Secure {
		dst = append(dst, "; Secure"...)
	}
	if o.Domain != "" {
		dst = append(dst, "; Domain="...)
		dst = append(dst, o.Domain...)
	}
	return dst
}

// Bucket returns the user's rollout bucket, 0..99, for percentage rollouts ("10% of users
// see the new hero": Bucket(id) < 10). It is stable: a pure function of the id bytes that
// will not change between releases, processes or machines, so a user stays in the same
// bucket for as long as they keep their id. Definition, for reimplementation elsewhere (the
// origin, a rule module): h = FNV-1a 64-bit of id; then the SplitMix64 finalizer
// (h ^= h>>30; h *= 0xbf58476d1ce4e5b9; h ^= h>>27; h *= 0x94d049bb133111eb; h ^= h>>31);
// bucket = h mod 100.
func Bucket(id []byte) int {
	h := uint64(14695981039346656037)
	for _, c := range id {
		h ^= uint64(c)
		h *= 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return int(h % 100)
}
