package server

import (
	"errors"
	"net/http"
	"sort"
	"time"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
	"github.com/segedge/segedge/origin/store"
)

// userSegments is the answer of GET /v1/users/{id}/segments and /user/segments.
type userSegments struct {
	UserID   string   `json:"user_id"`
	Segments []string `json:"segments"`
	Version  uint64   `json:"version"`
	Ruleset  uint64   `json:"ruleset"`
	// Features are the values request-scoped rules read (with ?features=1; edges ask for them on
	// a replica miss).
	Features []delta.FeatureValue `json:"features,omitempty"`
}

func (o *origin) userID(w http.ResponseWriter, id string) bool {
	if id == "" || len(id) > event.DefaultMaxIDLen {
		httpError(w, http.StatusBadRequest, "user id must be 1 to 128 bytes")
		return false
	}
	return true
}

// getUser is GET /v1/users/{id}: the profile with its segments.
func (o *origin) getUser(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !o.userID(w, id) {
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
	rec, err := o.members.Get(r.Context(), id)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "membership store: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"profile":  p,
		"segments": nonNil(rec.Members),
		"version":  rec.Version,
		"ruleset":  o.rulesetVersion(),
	})
}

// getUserSegments is GET /v1/users/{id}/segments and GET /user/segments?user_id=.
func (o *origin) getUserSegments(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" {
		id = r.URL.Query().Get("user_id")
	}
	if !o.userID(w, id) {
		return
	}
	rec, err := o.members.Get(r.Context(), id)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "membership store: "+err.Error())
		return
	}
	ans := userSegments{UserID: id, Segments: nonNil(rec.Members), Version: rec.Version, Ruleset: o.rulesetVersion()}
	switch {
	case r.URL.Query().Get("features") != "1":
	case rec.FeaturesKnown:
		// What every edge that followed DELTAS holds at rec.Version: an edge merges the user's
		// later deltas, which list only what changed, into this answer. Values computed from
		// the profile now could be another state (the batch of the next version half applied,
		// or this origin on another ruleset than the engine that wrote the record).
		ans.Features = rec.Features
	default: // a record written before features were recorded, or after an erasure
		if rules := o.activeRules(); rules != nil && len(rules.EdgeFeatures()) > 0 {
			p, err := o.store.Get(r.Context(), id)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				httpError(w, http.StatusServiceUnavailable, "profile store: "+err.Error())
				return
			}
			if p != nil {
				now := time.Now()
				for _, f := range rules.EdgeFeatures() {
					if v, ok := p.Value(f, now); ok {
						ans.Features = append(ans.Features, delta.FeatureValue{Key: delta.FeatureKey(f), Value: v})
					}
				}
			}
		}
	}
	if rec.Version == 0 && len(ans.Features) == 0 {
		writeJSON(w, http.StatusNotFound, ans) // never published: the caller treats the user as new
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

// deleteUser is DELETE /v1/users/{id}: erasure of the profile, the memberships, and (through a
// delta) the replicas on every edge.
func (o *origin) deleteUser(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !o.userID(w, id) {
		return
	}
	if err := o.engine.Erase(r.Context(), id); err != nil {
		httpError(w, http.StatusServiceUnavailable, "erase: "+err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listSegments is GET /v1/segments: the active ruleset's segments with their member counts.
func (o *origin) listSegments(w http.ResponseWriter, r *http.Request) {
	counts, err := o.members.Counts(r.Context())
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "membership store: "+err.Error())
		return
	}
	type seg struct {
		Name    string `json:"name"`
		Members int64  `json:"members"`
	}
	names := o.segmentNames()
	if names == nil {
		for n := range counts {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	out := make([]seg, 0, len(names))
	for _, n := range names {
		out = append(out, seg{Name: n, Members: counts[n]})
	}
	writeJSON(w, http.StatusOK, map[string]any{"ruleset": o.rulesetVersion(), "segments": out})
}

// getRescan answers the background rescan's progress after a ruleset change: every partition's
// marker (the ruleset version whose rescan completed on it, whichever origin did it) and this
// origin's own passes. The counters are segedge_origin_reevaluations_total and
// segedge_origin_rescan_running.
func (o *origin) getRescan(w http.ResponseWriter, r *http.Request) {
	if o.rescan == nil {
		httpError(w, http.StatusServiceUnavailable, "rescanner not started")
		return
	}
	p, err := o.rescan.Progress(r.Context())
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
