package httpcache

import (
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Field is one response header line as stored.
type Field struct{ Name, Value string }

// RequestHeader is what the cache reads of a request; *fasthttp.RequestHeader satisfies it.
type RequestHeader interface {
	Peek(key string) []byte
}

// Entry is one stored response. Entries in the cache are never modified: a revalidation stores a
// new Entry sharing the body (see Refreshed), so readers need no locks.
type Entry struct {
	Status int
	// Header holds the end-to-end response headers in the upstream's order, without Age.
	Header []Field
	Body   []byte
	// Compiled is the edge's own view of the body (e.g. the page cut into chunks), filled once
	// when the entry is stored and carried over by revalidations.
	Compiled any

	// ID is unique per stored entry (set by Cache.Store; 0 before): what is derived from this
	// entry's body elsewhere (compressed copies) is keyed by it, so it dies with the entry.
	ID uint64

	// URI is the request URI (path and query) the entry answers, set before OnCacheFill runs and
	// by Cache.Store; the edge uses it to record dependencies (Cache.AddDependency(e.URI, fragment)).
	URI string

	// RequestTime and ResponseTime are when the upstream request was sent and its response
	// arrived (RFC 9111 §4.2.3).
	RequestTime, ResponseTime time.Time
	// ETag and LastModified are the validators used to revalidate the entry.
	ETag, LastModified string
	// Tags are the surrogate keys from Surrogate-Key (space-separated) and Cache-Tag (comma-separated).
	Tags []string

	cc         Directives
	lifetime   time.Duration // freshness lifetime
	initialAge time.Duration // corrected_initial_age
	vary       []string      // canonical request header names, sorted; nil: no Vary
	varyValues string        // the request's values of vary, as stored
	weight     uint32
	key        string // where it is stored
	marker     bool   // a Vary marker at the primary key, not a response
	pass       bool   // a remembered uncacheable answer (RememberUncacheable), not a response
}

// NewEntry builds an entry from an upstream response's status and end-to-end headers; the body
// is set by the caller (it may not have been read yet when deciding whether to store).
func NewEntry(status int, header []Field, requestTime, responseTime time.Time) *Entry {
	e := &Entry{Status: status, RequestTime: requestTime, ResponseTime: responseTime}
	e.setHeader(header)
	return e
}

// setHeader stores header (dropping Age, which is recomputed when served) and derives
// validators, tags, Vary and freshness from it.
func (e *Entry) setHeader(header []Field) {
	e.Header = e.Header[:0:0]
	var cc []string
	var ageValue time.Duration
	var date, expires string
	var expiresSeen bool
	e.Tags, e.vary, e.ETag, e.LastModified = nil, nil, "", ""
	for _, f := range header {
		switch strings.ToLower(f.Name) {
		case "age":
			if d := seconds(strings.TrimSpace(f.Value)); d > 0 {
				ageValue = d
			}
			continue
		case "cache-control":
			cc = append(cc, f.Value)
		case "date":
			date = f.Value
		case "expires":
			expires, expiresSeen = f.Value, true
		case "etag":
			e.ETag = f.Value
		case "last-modified":
			e.LastModified = f.Value
		case "surrogate-key":
			e.Tags = append(e.Tags, strings.Fields(f.Value)...)
		case "cache-tag":
			for _, t := range strings.Split(f.Value, ",") {
				if t = strings.TrimSpace(t); t != "" {
					e.Tags = append(e.Tags, t)
				}
			}
		case "vary":
			for _, n := range strings.Split(f.Value, ",") {
				if n = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(n)); n != "" && !slices.Contains(e.vary, n) {
					e.vary = append(e.vary, n)
				}
			}
		}
		e.Header = append(e.Header, f)
	}
	slices.Sort(e.vary)
	e.cc = ParseCacheControl(cc...)

	// RFC 9111 §4.2.3: age calculation.
	dateValue := e.ResponseTime
	if t, err := http.ParseTime(date); err == nil {
		dateValue = t
	}
	apparent := max(0, e.ResponseTime.Sub(dateValue))
	corrected := ageValue + e.ResponseTime.Sub(e.RequestTime)
	e.initialAge = max(apparent, corrected)

	// RFC 9111 §4.2.1: freshness lifetime, shared-cache order. No heuristic freshness: a response
	// without explicit freshness is stored only if it must be revalidated anyway (no-cache).
	switch {
	case e.cc.SMaxAge >= 0:
		e.lifetime = e.cc.SMaxAge
	case e.cc.MaxAge >= 0:
		e.lifetime = e.cc.MaxAge
	case expiresSeen:
		if t, err := http.ParseTime(expires); err == nil {
			e.lifetime = max(0, t.Sub(dateValue))
		} // an invalid Expires means "already expired" (§5.3)
	default:
		e.lifetime = -1
	}
}

// Get returns the first value of the named header ("" if absent).
func (e *Entry) Get(name string) string {
	for _, f := range e.Header {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// Age is the entry's current age (RFC 9111 §4.2.3).
func (e *Entry) Age(now time.Time) time.Duration {
	return e.initialAge + max(0, now.Sub(e.ResponseTime))
}

// AgeHeader is the value of the Age header to send at now.
func (e *Entry) AgeHeader(now time.Time) string {
	return strconv.FormatInt(int64(e.Age(now)/time.Second), 10)
}

// Fresh says whether the entry may be served at now without asking the upstream.
func (e *Entry) Fresh(now time.Time) bool {
	return !e.cc.NoCache && e.lifetime > 0 && e.Age(now) < e.lifetime
}

// staleness is how long past its freshness lifetime the entry is at now.
func (e *Entry) staleness(now time.Time) time.Duration { return e.Age(now) - max(0, e.lifetime) }

// mayServeStale is false when the upstream forbade serving this response stale: must-revalidate,
// proxy-revalidate, or no-cache. (s-maxage implies proxy-revalidate, RFC 9111 §5.2.2.10, but an
// explicit stale-while-revalidate or stale-if-error from the same upstream is taken as its
// permission, as CDNs do.)
func (e *Entry) mayServeStale() bool {
	return !e.cc.MustRevalidate && !e.cc.ProxyRevalidate && !e.cc.NoCache
}

// WithinStaleWhileRevalidate says whether the stale entry may be served now while it is
// refreshed in the background (RFC 5861 §3).
func (e *Entry) WithinStaleWhileRevalidate(now time.Time) bool {
	return e.mayServeStale() && e.cc.StaleWhileRevalidate > 0 && e.staleness(now) < e.cc.StaleWhileRevalidate
}

// WithinStaleIfError says whether the stale entry may be served now in place of an upstream
// error or 5xx (RFC 5861 §4).
func (e *Entry) WithinStaleIfError(now time.Time) bool {
	return e.mayServeStale() && e.cc.StaleIfError > 0 && e.staleness(now) < e.cc.StaleIfError
}

// Revalidatable says whether a conditional request can validate the entry.
func (e *Entry) Revalidatable() bool { return e.ETag != "" || e.LastModified != "" }

// cacheableStatus are the status codes stored (those RFC 9110 §15.1 calls heuristically
// cacheable, minus 206: range responses are passed through).
func cacheableStatus(code int) bool {
	switch code {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// Storable says whether a shared cache may store e, the response to a GET with request header
// req (RFC 9111 §3), and if not, why. It looks at headers only, so it can be asked before the
// body is read.
func Storable(req RequestHeader, e *Entry) (bool, string) {
	rcc := ParseCacheControl(string(peek(req, "Cache-Control")))
	switch {
	case !cacheableStatus(e.Status):
		return false, "status"
	case rcc.NoStore:
		return false, "request no-store"
	case e.cc.NoStore:
		return false, "no-store"
	case e.cc.Private:
		return false, "private"
	case slices.Contains(e.vary, "*"):
		return false, "vary *"
	case len(peek(req, "Authorization")) > 0 && !e.cc.Public && e.cc.SMaxAge < 0 && !e.cc.MustRevalidate:
		return false, "authorization"
	case e.Get("Set-Cookie") != "":
		// A CDN that stores Set-Cookie hands one visitor's session to the next.
		return false, "set-cookie"
	case e.lifetime <= 0 && !(e.Revalidatable() && (e.cc.NoCache || e.lifetime == 0)):
		// Without explicit freshness (no heuristics here) only a response that is revalidated
		// on every use is worth keeping, and only if it has a validator.
		return false, "no freshness"
	}
	return true, ""
}

// peek reads a request header by its canonical name, or its lower-case spelling: a server that
// does not normalize header names (as the edge's fasthttp server is configured) matches names
// exactly.
func peek(req RequestHeader, canonical string) []byte {
	if v := req.Peek(canonical); len(v) > 0 {
		return v
	}
	return req.Peek(strings.ToLower(canonical))
}

// varyValues is the secondary key of a request for the given Vary header names.
func varyValues(names []string, req RequestHeader) string {
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte('=')
		b.Write(peek(req, n))
		b.WriteByte('\n')
	}
	return b.String()
}

// Refreshed is the entry after a 304 Not Modified (RFC 9111 §4.3.4): the stored headers updated
// with those of the 304, fresh times, the same body and Compiled.
func (e *Entry) Refreshed(notModified []Field, requestTime, responseTime time.Time) *Entry {
	merged := make([]Field, 0, len(e.Header)+len(notModified))
	replaced := func(name string) bool {
		switch strings.ToLower(name) {
		case "content-length", "content-encoding", "content-type", "transfer-encoding":
			return false // describe the body, which the 304 did not send
		}
		for _, f := range notModified {
			if strings.EqualFold(f.Name, name) {
				return true
			}
		}
		return false
	}
	for _, f := range e.Header {
		if !replaced(f.Name) {
			merged = append(merged, f)
		}
	}
	for _, f := range notModified {
		if replaced(f.Name) {
			merged = append(merged, f)
		}
	}
	n := &Entry{Status: e.Status, Body: e.Body, Compiled: e.Compiled, RequestTime: requestTime, ResponseTime: responseTime}
	n.setHeader(merged)
	return n
}

func (e *Entry) size() int {
	n := len(e.Body) + len(e.key) + len(e.URI) + 256
	for _, f := range e.Header {
		n += len(f.Name) + len(f.Value) + 32
	}
	for _, t := range e.Tags {
		n += len(t) + 16
	}
	return n
}
