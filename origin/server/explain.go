package server

import (
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/origin/rulesets"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/wasm/ruleset"
)

// explainer answers GET /v1/users/{id}/explain?segment=NAME: why a user is or is not in a
// segment, from the reference evaluator (cel-go), next to the compiled module's answer for the
// same profile at the same instant. The two must agree; a disagreement is a compiler bug, so it is
// said loudly: in the answer, in segedge_origin_explain_disagreements_total, in an error log.
type explainer struct {
	o             *origin
	disagreements prometheus.Counter

	mu  sync.Mutex // one reference evaluator, for the newest manifest asked about
	man *rules.Manifest
	ref *rules.Reference
}

func (o *origin) newExplainer() *explainer {
	x := &explainer{o: o, disagreements: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "segedge_origin_explain_disagreements_total",
		Help: "Explanations where the reference evaluator (cel-go) and the compiled module disagreed on a segment (a compiler bug).",
	})}
	o.reg.MustRegister(x.disagreements)
	return x
}

// explainedRuleset is what an explanation needs of the active ruleset (rulesets.Version).
type explainedRuleset interface {
	Version() uint64
	Manifest() *rules.Manifest
	Evaluator() *ruleset.Evaluator
}

var _ explainedRuleset = (*rulesets.Version)(nil)

// moduleAnswer is the compiled module's result for the segment.
// explainAnswer is the JSON of an explanation.
type explainAnswer struct {
	UserID  string    `json:"user_id"`
	Ruleset uint64    `json:"ruleset"`
	At      time.Time `json:"at"` // the evaluation time both evaluators used
	*rules.Explanation
	Module rules.ModuleAnswer `json:"module"`
	// Agree: the reference evaluator and the module gave the same result (absent when the
	// segment is computed by a hand-written module, which cel-go cannot run).
	Agree        *bool  `json:"agree,omitempty"`
	Disagreement string `json:"disagreement,omitempty"`
	// Stored is what the membership store holds (what /v1/users/{id}/segments answers): it can
	// differ from a fresh evaluation while a delta is in flight or a window expiry is due.
	Stored struct {
		Member  bool   `json:"member"`
		Version uint64 `json:"version"`
	} `json:"stored"`
	Hint string `json:"hint,omitempty"`
}

func (x *explainer) reference(m *rules.Manifest) (*rules.Reference, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.man != m {
		ref, err := rules.NewReference(m)
		if err != nil {
			return nil, err
		}
		x.man, x.ref = m, ref
	}
	return x.ref, nil
}

func (x *explainer) serve(w http.ResponseWriter, r *http.Request) {
	o := x.o
	id := r.PathValue("id")
	if !o.userID(w, id) {
		return
	}
	seg := r.URL.Query().Get("segment")
	if seg == "" {
		httpError(w, http.StatusBadRequest, "say which segment: ?segment=NAME")
		return
	}
	a := o.rules.Load()
	if a == nil {
		httpError(w, http.StatusServiceUnavailable, "no ruleset active")
		return
	}
	rs, ok := a.Rules.(explainedRuleset)
	if !ok {
		httpError(w, http.StatusNotImplemented, "the active ruleset cannot be explained")
		return
	}
	man := rs.Manifest()
	if man.Segment(seg) < 0 {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "no segment " + seg + " in ruleset", "ruleset": rs.Version(), "segments": a.segments})
		return
	}
	ref, err := x.reference(man)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "reference evaluator: "+err.Error())
		return
	}
	p, err := o.store.Get(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no profile for this user")
		return
	}
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "profile store: "+err.Error())
		return
	}
	now := time.Now()
	ex, err := ref.ExplainSegment(seg, p, nil, now)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "explain: "+err.Error())
		return
	}
	ans := explainAnswer{UserID: id, Ruleset: rs.Version(), At: now.UTC(), Explanation: ex}
	res := man.NewResult()
	bit := man.Segment(seg)
	if err := rs.Evaluator().Evaluate(r.Context(), p, nil, now, res); err != nil {
		ans.Module.Failed = err.Error()
	} else {
		ans.Module.Member, ans.Module.Error = res.IsMember(bit), res.IsError(bit)
	}
	ans.Agree, ans.Disagreement = ex.Verdict(ans.Module)
	if ans.Agree != nil && !*ans.Agree && ans.Module.Failed == "" {
		x.disagreements.Inc()
		o.log.Error("explain: reference evaluator and compiled module disagree", ops.UserAttr(id), ops.RequestAttr(r.Context()),
			slog.String("segment", seg), slog.Uint64("ruleset", rs.Version()),
			slog.String("reference", ex.Result), slog.Bool("module_member", ans.Module.Member), slog.Bool("module_error", ans.Module.Error))
	}
	if rec, err := o.members.Get(r.Context(), id); err == nil {
		ans.Stored.Member, ans.Stored.Version = slices.Contains(rec.Members, seg), rec.Version
	}
	if ex.NeedsRequest {
		ans.Hint = "this segment reads the request: an edge explains it with the visitor's request (GET /user/explain?segment=NAME with the Segedge-Debug token)"
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, ans)
}

// disagreement says how the two evaluators differ.
