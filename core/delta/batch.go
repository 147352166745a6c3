package delta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/segedge/segedge/core/profile"
)

// Message formats on DELTAS. The first byte of a message body says which one it is, so an edge
// reads what any origin version publishes:
//
//   - format 0, '{': one delta as a JSON object (origins before batching; Encode, Decode).
//   - format 1, '[': a JSON array of delta objects, in the order the origin produced them
//     (EncodeBatch). One message carries what one partition worker's batch produced, so
//     JetStream stores and every edge receives one message instead of one per event.
//
// Any other first byte is reserved for later formats and is an error. Deltas of one user are in
// version order within a message and across the messages of one partition subject. Rolling out:
// upgrade edges before origins (an edge before this format cannot read format 1).
const (
	FormatSingle = 0
	FormatBatch  = 1
)

// MaxBatchBytes is the largest body EncodeBatches puts in one message (a single delta larger than
// this still goes alone). Well under NATS's default max_payload of 1 MiB, and small enough that
// one message never holds up a partition's deltas for long.
const MaxBatchBytes = 256 << 10

// Batch is one message's worth of deltas.
type Batch struct {
	Body   []byte
	Deltas []*Delta
}

// EncodeBatches encodes ds (in order) as format-1 messages of at most limit bytes each
// (MaxBatchBytes if limit ≤ 0), splitting between deltas.
func EncodeBatches(ds []*Delta, limit int) ([]Batch, error) {
	if limit <= 0 {
		limit = MaxBatchBytes
	}
	var out []Batch
	var body, one []byte
	start := 0
	for i, d := range ds {
		var err error
		if one, err = appendDelta(one[:0], d); err != nil {
			return nil, fmt.Errorf("encode delta batch: delta %d: %w", i, err)
		}
		// +1 for the ',' or '[', +1 for the closing ']'.
		if len(body) > 0 && len(body)+1+len(one)+1 > limit {
			out = append(out, Batch{Body: append(body, ']'), Deltas: ds[start:i]})
			body, start = nil, i
		}
		if len(body) == 0 {
			body = make([]byte, 0, min(limit, 64+len(one)*(len(ds)-i)))
			body = append(body, '[')
		} else {
			body = append(body, ',')
		}
		body = append(body, one...)
	}
	if len(body) > 0 {
		out = append(out, Batch{Body: append(body, ']'), Deltas: ds[start:]})
	}
	return out, nil
}

// EncodeBatch encodes ds as one format-1 message, whatever its size.
func EncodeBatch(ds []*Delta) ([]byte, error) {
	bs, err := EncodeBatches(ds, math.MaxInt)
	if err != nil {
		return nil, err
	}
	if len(bs) == 0 {
		return []byte("[]"), nil
	}
	return bs[0].Body, nil
}

// BatchError reports the deltas of a readable message that DecodeBatch left out because they
// lack what an edge relies on (a user id, a version); the others were returned.
type BatchError struct {
	Skipped int
	First   error // why the first one was left out
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("decode delta batch: %d deltas left out, the first: %v", e.Skipped, e.First)
}

// DecodeBatch parses a message body of either format and returns its deltas in order. A body
// that cannot be parsed returns no deltas and an error; deltas that parse but fail the checks of
// Decode are left out and counted in a *BatchError, the others returned with it.
func DecodeBatch(b []byte) ([]Delta, error) {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return nil, errors.New("decode delta batch: empty message")
	}
	switch b[0] {
	case '{':
		d, err := Decode(b)
		if err != nil {
			return nil, err
		}
		return []Delta{*d}, nil
	case '[':
	default:
		return nil, fmt.Errorf("decode delta batch: unknown format (first byte %q)", b[0])
	}
	// Features are decoded in their wire form and converted here, not by FeatureValue's
	// UnmarshalJSON: a json.Unmarshaler is handed its bytes after encoding/json checked them once
	// more, which cost a third of decoding a batch.
	var ws []wireDelta
	if err := json.Unmarshal(b, &ws); err != nil {
		return nil, fmt.Errorf("decode delta batch: %w", err)
	}
	ds := make([]Delta, len(ws))
	for i := range ws {
		ds[i] = ws[i].Delta
		if ws[i].Features == nil {
			continue
		}
		ds[i].Features = make([]FeatureValue, len(ws[i].Features))
		for j := range ws[i].Features {
			f, err := ws[i].Features[j].value()
			if err != nil {
				return nil, fmt.Errorf("decode delta batch: delta %d: %w", i, err)
			}
			ds[i].Features[j] = f
		}
	}
	var berr *BatchError
	kept := ds[:0]
	for i := range ds {
		if err := ds[i].check(); err != nil {
			if berr == nil {
				berr = &BatchError{First: fmt.Errorf("delta %d: %w", i, err)}
			}
			berr.Skipped++
			continue
		}
		kept = append(kept, ds[i])
	}
	clear(ds[len(kept):]) // drop what the left-out tail references
	if berr != nil {
		return kept, berr
	}
	return kept, nil
}

// wireDelta is a delta as DecodeBatch reads it: its Features field, shallower than the embedded
// Delta's, takes the features in their wire form.
type wireDelta struct {
	Delta
	Features []wireFeature `json:"features,omitempty"`
}

// BatchMsgID is the JetStream message id of a message holding ds, derived from every delta's
// user and version in order, so a batch published again after a failed attempt (same deltas) is
// dropped by JetStream's duplicate window. A batch of one delta has that delta's MsgID, as
// before batching.
func BatchMsgID(ds []*Delta) string {
	if len(ds) == 1 {
		return MsgID(ds[0])
	}
	h := fnv.New128a()
	var buf []byte
	for _, d := range ds {
		buf = append(buf[:0], d.UserID...)
		buf = append(buf, 0)
		buf = strconv.AppendUint(buf, d.Version, 10)
		buf = append(buf, 0)
		_, _ = h.Write(buf)
	}
	var sum [16]byte
	id := make([]byte, 0, 48)
	id = append(id, "b1:"...)
	id = strconv.AppendInt(id, int64(len(ds)), 10)
	id = append(id, ':')
	id = fmt.Appendf(id, "%x", h.Sum(sum[:0]))
	return string(id)
}

// appendDelta appends d as a JSON object, the same as encoding/json would write it (field names
// and omitempty rules of Delta's tags), without reflection: the origin encodes one delta per event.
func appendDelta(b []byte, d *Delta) ([]byte, error) {
	b = append(b, `{"user_id":`...)
	b = appendString(b, d.UserID)
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, d.Version, 10)
	b = append(b, `,"ruleset":`...)
	b = strconv.AppendUint(b, d.Ruleset, 10)
	b = append(b, `,"cause":`...)
	b = appendString(b, string(d.Cause))
	b = append(b, `,"members":`...)
	b = appendStrings(b, d.Members)
	if len(d.Entered) > 0 {
		b = append(b, `,"entered":`...)
		b = appendStrings(b, d.Entered)
	}
	if len(d.Exited) > 0 {
		b = append(b, `,"exited":`...)
		b = appendStrings(b, d.Exited)
	}
	if len(d.Features) > 0 {
		b = append(b, `,"features":[`...)
		for i, f := range d.Features {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendFeature(b, f); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	}
	if d.Base != 0 {
		b = append(b, `,"base":`...)
		b = strconv.AppendUint(b, d.Base, 10)
	}
	if len(d.Gone) > 0 {
		b = append(b, `,"gone":`...)
		b = appendStrings(b, d.Gone)
	}
	if d.Erased {
		b = append(b, `,"erased":true`...)
	}
	if d.AcceptedAt != 0 {
		b = append(b, `,"accepted_at":`...)
		b = strconv.AppendInt(b, d.AcceptedAt, 10)
	}
	if d.Due != 0 {
		b = append(b, `,"due":`...)
		b = strconv.AppendInt(b, d.Due, 10)
	}
	if d.TraceParent != "" {
		b = append(b, `,"traceparent":`...)
		b = appendString(b, d.TraceParent)
	}
	return append(b, '}'), nil
}

// appendFeature writes f as FeatureValue.MarshalJSON does.
func appendFeature(b []byte, f FeatureValue) ([]byte, error) {
	b = append(b, `{"k":`...)
	b = appendString(b, f.Key)
	switch f.Value.Kind {
	case profile.KindBool:
		b = append(b, `,"t":"b","v":`...)
		b = strconv.AppendBool(b, f.Value.Bool)
	case profile.KindInt:
		b = append(b, `,"t":"i","v":`...)
		b = strconv.AppendInt(b, f.Value.Int, 10)
	case profile.KindDouble:
		if math.IsNaN(f.Value.Double) || math.IsInf(f.Value.Double, 0) {
			return nil, fmt.Errorf("feature %s: %v cannot be sent", f.Key, f.Value.Double)
		}
		b = append(b, `,"t":"d","v":`...)
		b = strconv.AppendFloat(b, f.Value.Double, 'g', -1, 64)
	case profile.KindString:
		b = append(b, `,"t":"s","v":`...)
		b = appendString(b, f.Value.Str)
	default:
		return nil, fmt.Errorf("feature %s: absent values are not sent", f.Key)
	}
	return append(b, '}'), nil
}

func appendStrings(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Like encoding/json, invalid UTF-8 becomes U+FFFD and
// U+2028/U+2029 are escaped; unlike it, <, > and & are not (nothing embeds deltas in HTML).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
