package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// quantile returns the q-quantile (0..1) of sorted samples by the nearest-rank method; 0 for
// no samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// latencies collects samples from one goroutine at a time (callers lock).
type latencies []time.Duration

func (l latencies) summary() string {
	if len(l) == 0 {
		return "no samples"
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return fmt.Sprintf("p50 %s  p99 %s  p99.9 %s  max %s  (n=%d)",
		fmtDur(quantile(s, 0.5)), fmtDur(quantile(s, 0.99)), fmtDur(quantile(s, 0.999)), fmtDur(s[len(s)-1]), len(s))
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

// metrics is one scrape of a Prometheus text exposition: every sample by its full series text
// (name plus labels as exposed, e.g. `x_bucket{le="0.001"}`).
type metrics map[string]float64

// parseMetrics reads the Prometheus text format. Comments and blank lines are skipped; a line
// whose value is not a number is an error, so a changed format is noticed, not misread.
func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// "<name>{<labels>} <value> [<timestamp>]" or "<name> <value> [<timestamp>]".
		var series, rest string
		if end := strings.LastIndexByte(line, '}'); end >= 0 {
			series, rest = line[:end+1], line[end+1:]
		} else {
			series, rest, _ = strings.Cut(line, " ")
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 || len(fields) > 2 {
			return nil, fmt.Errorf("metrics line %d: %q: want <series> <value>", n, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %q: %w", n, line, err)
		}
		m[series] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return m, nil
}

// bucket is one cumulative histogram bucket.
type bucket struct {
	le    float64 // upper bound in seconds; +Inf for the last
	count float64 // observations <= le
}

// histogram returns the cumulative buckets of an unlabelled histogram, sorted by bound.
func (m metrics) histogram(name string) []bucket {
	var bs []bucket
	prefix := name + `_bucket{le="`
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(rest, `"}`), 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{le: le, count: v})
	}
	slices.SortFunc(bs, func(a, b bucket) int {
		switch {
		case a.le < b.le:
			return -1
		case a.le > b.le:
			return 1
		}
		return 0
	})
	return bs
}

// histDelta is what a histogram observed between two scrapes: after minus before, per bucket.
func histDelta(before, after metrics, name string) []bucket {
	a := after.histogram(name)
	b := before.histogram(name)
	prev := map[float64]float64{}
	for _, x := range b {
		prev[x.le] = x.count
	}
	out := make([]bucket, len(a))
	for i, x := range a {
		out[i] = bucket{le: x.le, count: x.count - prev[x.le]}
	}
	return out
}

// histQuantile estimates the q-quantile from cumulative buckets as Prometheus'
// histogram_quantile does: linear interpolation inside the bucket that holds the rank. When the
// rank falls in the +Inf bucket it returns the highest finite bound and over=true (the true
// value is above it). ok is false when the histogram observed nothing.
func histQuantile(bs []bucket, q float64) (v float64, over, ok bool) {
	if len(bs) == 0 || bs[len(bs)-1].count <= 0 {
		return 0, false, false
	}
	total := bs[len(bs)-1].count
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return lower, true, true
			}
			inBucket := b.count - below
			if inBucket <= 0 {
				return b.le, false, true
			}
			return lower + (b.le-lower)*(rank-below)/inBucket, false, true
		}
		lower, below = b.le, b.count
	}
	return lower, true, true
}

// histSummary formats p50/p99/p99.9 of a histogram delta, or why there are none.
func histSummary(bs []bucket) string {
	if _, _, ok := histQuantile(bs, 0.5); !ok {
		return "no observations"
	}
	var parts []string
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p99", 0.99}, {"p99.9", 0.999}} {
		v, over, _ := histQuantile(bs, q.q)
		s := fmtDur(time.Duration(v * float64(time.Second)))
		if over {
			s = ">" + s
		}
		parts = append(parts, q.name+" "+s)
	}
	return strings.Join(parts, "  ") + fmt.Sprintf("  (n=%.0f)", bs[len(bs)-1].count)
}
