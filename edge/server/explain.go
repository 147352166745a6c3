package server

import (
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/ops"
	"github.com/segedge/segedge/core/rules"
	"github.com/segedge/segedge/edge/identity"
	"github.com/segedge/segedge/edge/proxy"
	"github.com/segedge/segedge/edge/replica"
)

// explainer answers GET /user/explain?segment=NAME for a caller with the debug token
// (Segedge-Debug: SEGEDGE_DEBUG_TOKEN): why this visitor, with this request, is or is not in a
// segment — request-scoped rules included, which only an edge can evaluate. The reference
// evaluator (cel-go) explains; the compiled module answers for the same replica values, request
// and instant; they must agree, and a disagreement (a compiler bug) is reported in the answer,
// in segedge_edge_explain_disagreements_total and in an error log.
//
// Parameters: segment (required); path, the page to explain for (default "/", its query string
// is what request.query reads); user_id, to explain another user than the cookie's. Headers,
// cookies, country and device are this request's own. Without the debug token the path is the
// site's, proxied like any other: visitors never see that it exists.
type explainer struct {
	disagreements prometheus.Counter

	mu  sync.Mutex // one reference evaluator, for the newest manifest asked about
	man *rules.Manifest
	ref *rules.Reference
}

func newExplainer(reg prometheus.Registerer) *explainer {
	x := &explainer{disagreements: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "segedge_edge_explain_disagreements_total",
		Help: "Explanations where the reference evaluator (cel-go) and the compiled module disagreed on a segment (a compiler bug).",
	})}
	reg.MustRegister(x.disagreements)
	return x
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

// explainRequest is the request context of an explanation: this request's headers, cookies,
// country and device, the page path (and its query) asked about, and the hour fixed once so both
// evaluators see the same.
type explainRequest struct {
	reqSource
	path  string
	query url.Values
	hour  int
}

func (r explainRequest) Path() string { return r.path }
func (r explainRequest) Hour() int    { return r.hour }
func (r explainRequest) Query(name string) (string, bool) {
	v, ok := r.query[name]
	if !ok || len(v) == 0 {
		return "", false
	}
	return v[0], true
}

type edgeExplainAnswer struct {
	UserID   string    `json:"user_id,omitempty"`
	UserFrom string    `json:"user_from"` // cookie, user_id or anonymous
	Replica  string    `json:"replica"`   // found: the user's features are in this edge's replica
	Ruleset  uint64    `json:"ruleset"`
	At       time.Time `json:"at"`
	Request  struct {
		Path    string `json:"path"`
		Country string `json:"country"`
		Device  string `json:"device"`
		Hour    int    `json:"hour"`
		Bucket  int    `json:"bucket"`
	} `json:"request"`
	*rules.Explanation
	Module       rules.ModuleAnswer `json:"module"`
	Agree        *bool              `json:"agree,omitempty"`
	Disagreement string             `json:"disagreement,omitempty"`
}

func (x *explainer) serve(e *edge, ctx *fasthttp.RequestCtx) {
	tok := ctx.Request.Header.Peek("Segedge-Debug")
	if e.cfg.DebugToken == "" || subtle.ConstantTimeCompare(tok, []byte(e.cfg.DebugToken)) != 1 {
		e.proxy.Handle(ctx) // the site's own /user/explain, if it has one
		return
	}
	ctx.Response.Header.Set("Cache-Control", "private, no-store")
	args := ctx.QueryArgs()
	seg := string(args.Peek("segment"))
	if seg == "" {
		explainJSON(ctx, fasthttp.StatusBadRequest, map[string]string{"error": "say which segment: ?segment=NAME"})
		return
	}
	page := "/"
	if p := args.Peek("path"); len(p) > 0 {
		page = string(p)
	}
	u, err := url.Parse(page)
	if err != nil || u.Path == "" || u.Path[0] != '/' {
		explainJSON(ctx, fasthttp.StatusBadRequest, map[string]string{"error": "path must be a page path like /shop?utm=spring"})
		return
	}
	rs := e.acquire()
	if rs == nil {
		explainJSON(ctx, fasthttp.StatusServiceUnavailable, map[string]string{"error": "no ruleset loaded yet"})
		return
	}
	defer rs.refs.Done()
	bit := rs.man.Segment(seg)
	if bit < 0 {
		names := make([]string, 0, len(rs.man.Segments))
		for _, s := range rs.man.Segments {
			names = append(names, s.Name)
		}
		explainJSON(ctx, fasthttp.StatusNotFound, map[string]any{"error": "no segment " + seg + " in ruleset", "ruleset": rs.version, "segments": names})
		return
	}
	ref, err := x.reference(rs.man)
	if err != nil {
		explainJSON(ctx, fasthttp.StatusInternalServerError, map[string]string{"error": "reference evaluator: " + err.Error()})
		return
	}

	var ans edgeExplainAnswer
	ans.UserFrom = "anonymous"
	if id := args.Peek("user_id"); len(id) > 0 {
		ans.UserID, ans.UserFrom = string(id), "user_id"
	} else if id, ok := e.signer.Verify(ctx.Request.Header.Cookie(identity.CookieName)); ok {
		ans.UserID, ans.UserFrom = string(id), "cookie"
	}
	var prof rules.FeatureSource
	ans.Replica = "not found"
	if ans.UserID != "" {
		var ent *replica.Entry
		if ent = e.replica.Lookup(ctx, ans.UserID); ent != nil {
			prof, ans.Replica = entrySource{e: ent, r: e.replica, rs: rs}, "found"
		}
	}
	now := time.Now()
	req := explainRequest{reqSource: reqSource{ctx: ctx, id: []byte(ans.UserID), countryHeader: e.cfg.CountryHeader},
		path: u.Path, query: u.Query(), hour: now.UTC().Hour()}
	ans.Ruleset, ans.At = rs.version, now.UTC()
	ans.Request.Path, ans.Request.Country, ans.Request.Device = req.Path(), req.Country(), req.Device()
	ans.Request.Hour, ans.Request.Bucket = req.Hour(), req.Bucket()

	ex, err := ref.ExplainSegment(seg, prof, req, now)
	if err != nil {
		explainJSON(ctx, fasthttp.StatusInternalServerError, map[string]string{"error": "explain: " + err.Error()})
		return
	}
	ans.Explanation = ex
	res := rs.man.NewResult()
	if err := rs.ev.Evaluate(ctx, prof, req, now, res); err != nil {
		ans.Module.Failed = err.Error()
	} else {
		ans.Module.Member, ans.Module.Error = res.IsMember(bit), res.IsError(bit)
	}
	ans.Agree, ans.Disagreement = ex.Verdict(ans.Module)
	if ans.Agree != nil && !*ans.Agree && ans.Module.Failed == "" {
		x.disagreements.Inc()
		e.log.Error("explain: reference evaluator and compiled module disagree", ops.UserAttr(ans.UserID), "request_id", proxy.RequestID(ctx),
			slog.String("segment", seg), slog.Uint64("ruleset", rs.version),
			slog.String("reference", ex.Result), slog.Bool("module_member", ans.Module.Member), slog.Bool("module_error", ans.Module.Error))
	}
	explainJSON(ctx, fasthttp.StatusOK, ans)
}

func explainJSON(ctx *fasthttp.RequestCtx, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, b = fasthttp.StatusInternalServerError, []byte(`{"error":"encode the explanation"}`)
	}
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}
