// Package purge is the wire format of cache invalidations: the origin's POST /v1/invalidate (the
// webhook a CMS calls when content changes) publishes one on the stream INVALIDATE, subject
// seg.invalidate, and every edge purges what it names from its cache.
package purge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Limits on one request, so one call cannot make every edge scan forever.
const (
	MaxItems  = 1000
	MaxLength = 2048
)

// Request names what to purge. A URL is an absolute path with an optional query ("/shop?page=2")
// or a full URL whose host names the site ("https://shop.example/x"); a prefix is a path prefix
// ("/blog/"); a tag is a surrogate key the upstream sent in Surrogate-Key or Cache-Tag.
type Request struct {
	ID       string   `json:"id,omitempty"`
	URLs     []string `json:"urls,omitempty"`
	Prefixes []string `json:"prefixes,omitempty"`
	Tags     []string `json:"tags,omitempty"`
}

// Decode parses and validates a request body.
func Decode(b []byte) (*Request, error) {
	var r Request
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("invalidate: body must be {\"urls\":[…],\"prefixes\":[…],\"tags\":[…]}: %v", err)
	}
	return &r, r.Validate()
}

// Validate checks the request's limits and shapes.
func (r *Request) Validate() error {
	n := len(r.URLs) + len(r.Prefixes) + len(r.Tags)
	if n == 0 {
		return errors.New("invalidate: nothing to purge; give urls, prefixes or tags")
	}
	if n > MaxItems {
		return fmt.Errorf("invalidate: %d items, at most %d per request", n, MaxItems)
	}
	for _, u := range r.URLs {
		if err := checkURL(u); err != nil {
			return err
		}
	}
	for _, p := range r.Prefixes {
		if !strings.HasPrefix(p, "/") || len(p) > MaxLength {
			return fmt.Errorf("invalidate: prefix %q must start with / and be at most %d bytes", p, MaxLength)
		}
	}
	for _, t := range r.Tags {
		if t == "" || len(t) > 256 || strings.ContainsAny(t, " ,\t\r\n") {
			return fmt.Errorf("invalidate: tag %q must be 1 to 256 bytes without spaces or commas", t)
		}
	}
	return nil
}

func checkURL(s string) error {
	if len(s) > MaxLength {
		return fmt.Errorf("invalidate: url of %d bytes, at most %d", len(s), MaxLength)
	}
	if strings.HasPrefix(s, "/") {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("invalidate: url %q must be a path (/x) or an http(s) URL", s)
	}
	return nil
}

// Encode returns the message body.
func (r *Request) Encode() []byte {
	b, _ := json.Marshal(r)
	return b
}
