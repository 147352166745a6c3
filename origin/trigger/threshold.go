package trigger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
)

// thresholds evaluates the threshold triggers (`on: <boolean rule>`) of one rules file. Each
// expression is compiled as a hidden segment next to the file's own segments and scores (so it
// may use segment("…") and the file's scores), and evaluated with the rules package's
// reference evaluator, which gives the compiled module's answers.
type thresholds struct {
	ref   *rules.Reference
	man   *rules.Manifest
	spec  *profile.Spec
	list  []Trigger // sorted by name
	index []int     // index[i]: the hidden segment of list[i] in man.Segments
	pool  sync.Pool // *rules.Result
}

// hiddenSegment names the hidden segment of the i-th threshold trigger: not a name a rules
// file can define (they are identifiers), so it cannot collide.
func hiddenSegment(i int) string { return "__threshold_" + strconv.Itoa(i) }

func compileThresholds(f *rules.File, ts []Trigger) (*thresholds, error) {
	var list []Trigger
	for _, t := range ts {
		if t.On == Threshold {
			list = append(list, t)
		}
	}
	if len(list) == 0 {
		return nil, nil
	}
	slices.SortFunc(list, func(a, b Trigger) int { return cmpString(a.Name, b.Name) })
	sub := &rules.File{Name: f.Name, Scores: f.Scores, Segments: slices.Clone(f.Segments)}
	for i, t := range list {
		sub.Segments = append(sub.Segments, rules.SegmentDef{Name: hiddenSegment(i), Rule: t.Expr})
	}
	rs, err := rules.Compile(sub)
	if err != nil {
		return nil, fmt.Errorf("threshold triggers: %w", err)
	}
	man := &rs.Manifest
	ref, err := rules.NewReference(man)
	if err != nil {
		return nil, fmt.Errorf("threshold triggers: %w", err)
	}
	spec, err := profile.NewSpec(man.Features(), man.ScoreSpecs(), man.TimeMarks())
	if err != nil {
		return nil, fmt.Errorf("threshold triggers: %w", err)
	}
	th := &thresholds{ref: ref, man: man, spec: spec, list: list}
	for i, t := range list {
		idx := man.Segment(hiddenSegment(i))
		if idx < 0 {
			return nil, fmt.Errorf("threshold trigger %q: not compiled", t.Name)
		}
		if man.Segments[idx].NeedsRequest {
			return nil, fmt.Errorf("threshold trigger %q: %q reads the request; a threshold can only use profile features", t.Name, t.Expr)
		}
		th.index = append(th.index, idx)
	}
	th.pool.New = func() any { return man.NewResult() }
	return th, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// holding appends the names of the triggers whose expression holds for p at now (sorted, as
// list is). An expression that fails to evaluate (a missing feature) does not hold.
func (th *thresholds) holding(p *profile.Profile, now time.Time, dst []string) []string {
	res := th.pool.Get().(*rules.Result)
	defer th.pool.Put(res)
	th.ref.Evaluate(p, nil, now, res)
	for i, idx := range th.index {
		if res.IsMember(idx) {
			dst = append(dst, th.list[i].Name)
		}
	}
	return dst
}

// SetRulesFile sets the triggers of a rules file (source as uploaded): enter, exit and
// threshold triggers, validated like SetTriggers; threshold expressions are compiled against
// the file's segments and scores. On error the old set stays.
func (f *Firer) SetRulesFile(src []byte) error {
	file, err := rules.Parse("rules.yaml", src)
	if err != nil {
		return fmt.Errorf("triggers: %w", err)
	}
	ts, err := TriggersOf(file)
	if err != nil {
		return err
	}
	return f.setTriggers(ts, file)
}

// TriggersOf converts a rules file's triggers section.
func TriggersOf(file *rules.File) ([]Trigger, error) {
	var out []Trigger
	for _, d := range file.Triggers {
		t := Trigger{Name: d.Name, Segment: d.Segment, Webhook: d.Webhook}
		switch d.Kind {
		case rules.TriggerEnter:
			t.On = Enter
		case rules.TriggerExit:
			t.On = Exit
		case rules.TriggerThreshold:
			t.On, t.Segment, t.Expr = Threshold, "", d.Expr
		default:
			return nil, fmt.Errorf("trigger %q: unknown kind %q", d.Name, d.Kind)
		}
		out = append(out, t)
	}
	return out, nil
}

// ThresholdSpec implements engine.ThresholdSink: what profiles must maintain for the rules
// file's segments and threshold expressions together; nil with no threshold trigger.
func (f *Firer) ThresholdSpec() *profile.Spec {
	if th := f.triggers.Load().th; th != nil {
		return th.spec
	}
	return nil
}

// Thresholds implements engine.ThresholdSink: the names of the threshold triggers whose
// expression holds for p at now, sorted.
func (f *Firer) Thresholds(p *profile.Profile, now time.Time, dst []string) []string {
	if th := f.triggers.Load().th; th != nil {
		return th.holding(p, now, dst)
	}
	return dst
}

// FireThresholds implements engine.ThresholdSink: a firing of each named threshold trigger for
// the crossing recorded by delta d (id <trigger>/<user>/<version>, like enter and exit), stored
// on TRIGGERS before it returns. Names no longer in the set (a ruleset swap meanwhile) are
// skipped.
func (f *Firer) FireThresholds(ctx context.Context, d *delta.Delta, names []string) error {
	if d == nil || d.Erased || len(names) == 0 {
		return nil
	}
	s := f.triggers.Load()
	var futs []pending
	for _, name := range names {
		t, ok := s.byName[name]
		if !ok || t.On != Threshold {
			continue
		}
		msg, err := f.message(t, d)
		if err != nil {
			return fmt.Errorf("fire trigger %q: %w", t.Name, err)
		}
		fut, err := f.cfg.JS.PublishMsgAsync(msg)
		if err != nil {
			return fmt.Errorf("fire trigger %q: publish: %w", t.Name, err)
		}
		futs = append(futs, pending{t.Name, fut})
	}
	return f.await(ctx, futs)
}

type pending struct {
	name string
	fut  jetstream.PubAckFuture
}

// await waits for JetStream to store every pending firing.
func (f *Firer) await(ctx context.Context, futs []pending) error {
	if len(futs) == 0 {
		return nil
	}
	timer := time.NewTimer(f.cfg.PublishTimeout)
	defer timer.Stop()
	var errs []error
	for _, p := range futs {
		select {
		case ack := <-p.fut.Ok():
			if !ack.Duplicate {
				f.fired.WithLabelValues(p.name).Inc()
			}
		case err := <-p.fut.Err():
			errs = append(errs, fmt.Errorf("fire trigger %q: %w", p.name, err))
		case <-timer.C:
			return errors.Join(append(errs, fmt.Errorf("fire trigger %q: no ack from JetStream within %s", p.name, f.cfg.PublishTimeout))...)
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("fire trigger %q: %w", p.name, ctx.Err()))...)
		}
	}
	return errors.Join(errs...)
}
