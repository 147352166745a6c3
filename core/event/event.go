// Package event is the behaviour event model: what a beacon or a backend sends, how a request
// body is decoded and validated (field by field, so one bad event does not reject its batch),
// which partition a user's events travel on, and the compact wire form carried on JetStream.
package event

import (
	"errors"
	"hash/fnv"
	"strconv"
	"time"
)

// Event is one behaviour event: user UserID did Type at TS, with free-form Props.
// JSON names: event_id, user_id, type, ts, props.
type Event struct {
	ID     string         `json:"event_id"`
	UserID string         `json:"user_id"`
	Type   string         `json:"type"`
	TS     time.Time      `json:"ts"`
	Props  map[string]any `json:"props,omitempty"`
}

// Limits bound what Decode accepts. A zero field takes its default (see DefaultLimits), so
// Limits{} is a valid, conservative configuration.
type Limits struct {
	// MaxBodyBytes is the largest request body (default 1 MiB). Larger: ErrBodyTooLarge (413).
	MaxBodyBytes int
	// MaxBatch is the most events in one request (default 500). More: ErrBatchTooLarge (413).
	MaxBatch int
	// MaxPropsBytes is the largest encoded props object of one event (default 16 KiB).
	MaxPropsBytes int
	// MaxPropsDepth is the deepest nesting of props; the props object itself is depth 1 (default 5).
	MaxPropsDepth int
	// MaxIDLen is the longest event_id and user_id in bytes (default 128).
	MaxIDLen int
	// MaxFuture is how far ahead of the server clock ts may be, to absorb client clock skew
	// (default 5 minutes).
	MaxFuture time.Duration
	// Retention is the oldest ts accepted (default 90 days): older events could not land in any
	// bucket the profile store still keeps.
	Retention time.Duration
	// FixedUserID, when set, is the user every event of the request belongs to (the edge's beacon
	// takes the user from its signed cookie): an event may omit user_id, and one that names a
	// different user is rejected.
	FixedUserID string
}

// Default limits; documented on Limits.
const (
	DefaultMaxBodyBytes  = 1 << 20
	DefaultMaxBatch      = 500
	DefaultMaxPropsBytes = 16 << 10
	DefaultMaxPropsDepth = 5
	DefaultMaxIDLen      = 128
	DefaultMaxFuture     = 5 * time.Minute
	DefaultRetention     = 90 * 24 * time.Hour
)

// DefaultLimits returns the documented defaults.
func DefaultLimits() Limits { return Limits{}.withDefaults() }

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if l.MaxBatch <= 0 {
		l.MaxBatch = DefaultMaxBatch
	}
	if l.MaxPropsBytes <= 0 {
		l.MaxPropsBytes = DefaultMaxPropsBytes
	}
	if l.MaxPropsDepth <= 0 {
		l.MaxPropsDepth = DefaultMaxPropsDepth
	}
	if l.MaxIDLen <= 0 {
		l.MaxIDLen = DefaultMaxIDLen
	}
	if l.MaxFuture <= 0 {
		l.MaxFuture = DefaultMaxFuture
	}
	if l.Retention <= 0 {
		l.Retention = DefaultRetention
	}
	return l
}

// Whole-request errors returned by Decode; test with errors.Is. The first two map to HTTP 413,
// ErrMalformed to 400.
var (
	ErrBodyTooLarge  = errors.New("request body too large")
	ErrBatchTooLarge = errors.New("too many events in one request")
	ErrMalformed     = errors.New("malformed request body")
)

// FieldError says why one event of a batch was rejected. Index is the event's position in the
// batch (array element, or non-empty NDJSON line, counted from 0); Field is its JSON name, or ""
// when the event as a whole is unusable.
type FieldError struct {
	Index  int    `json:"index"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return "event " + strconv.Itoa(e.Index) + ": " + e.Reason
	}
	return "event " + strconv.Itoa(e.Index) + ": " + e.Field + ": " + e.Reason
}

// Partition returns the partition (0..p-1) of a user's events: FNV-1a 32-bit of the user id's
// bytes, modulo p. This is part of the wire contract — every producer (origin ingest, edge
// beacon) must agree on it so one user's events stay ordered on one subject. p <= 0 yields 0.
func Partition(userID string, p int) int {
	if p <= 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(userID))
	return int(h.Sum32() % uint32(p))
}
