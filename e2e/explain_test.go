package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const (
	iphoneUA  = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
	desktopUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)

// explainJSON GETs an explanation and decodes it.
func explainJSON(t *testing.T, u, cookie string, hdr ...string) (int, map[string]any) {
	t.Helper()
	res, body := get(t, u, cookie, hdr...)
	var m map[string]any
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%s: %v: %q", u, err, body)
		}
	}
	return res.StatusCode, m
}

// inputValue finds an input of an explanation by its expression.
func inputValue(m map[string]any, expr string) (any, bool) {
	ins, _ := m["inputs"].([]any)
	for _, in := range ins {
		if in := in.(map[string]any); in["expr"] == expr {
			return in["value"], true
		}
	}
	return nil, false
}

// "Why does this visitor see that banner?" in one call, at the edge (with the visitor's request)
// and at the origin (profile rules), from the real programs; the reference evaluator and the
// compiled module agree on every answer.
func TestExplainAtEdgeAndOrigin(t *testing.T) {
	sys := startSystem(t, services{}, siteUpstream(t).URL, "SEGEDGE_DEBUG_TOKEN=dbg-token")
	putRules(t, sys, "../scripts/demo/rules.yaml")
	// Profiles count add_to_cart once the ruleset that reads it is active.
	for deadline := time.Now().Add(10 * time.Second); counter(sys.originURL, "segedge_origin_ruleset_version") < 1 ||
		counter(sys.edgeOpsURL, "segedge_edge_ruleset_version") < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ruleset not active on origin and edge within 10s")
		}
	}
	res, _ := get(t, sys.edgeURL+"/", "")
	cookie := cookieOf(res)
	if cookie == "" {
		t.Fatal("no visitor cookie")
	}
	req, _ := http.NewRequest("POST", sys.edgeURL+"/v1/events", strings.NewReader(`[{"event_id":"x1","type":"add_to_cart"}]`))
	req.Header.Set("Cookie", "segedge_uid="+cookie)
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != 202 {
		t.Fatalf("beacon: %v %v", r, err)
	}
	// The event reaches this edge's replica.
	var user string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, m := explainJSON(t, sys.edgeURL+"/user/explain?segment=cart_abandoner", cookie, "Segedge-Debug", "dbg-token")
		if code == 200 && m["result"] == "true" {
			user, _ = m["user_id"].(string)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cart never showed in the explanation: %d %v", code, m)
		}
	}
	if user == "" {
		t.Fatal("no user_id in the edge's explanation")
	}

	edge := sys.edgeURL + "/user/explain?"
	for _, tc := range []struct {
		name   string
		query  string
		hdr    []string
		status int
		check  func(t *testing.T, m map[string]any)
	}{
		{"cart abandoner, from the replica", "segment=cart_abandoner", []string{"User-Agent", desktopUA}, 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "true")
			want(t, m, "agree", true)
			want(t, m, "replica", "found")
			want(t, m, "user_from", "cookie")
			want(t, m["module"].(map[string]any), "member", true)
			if v, _ := inputValue(m, `count("add_to_cart", "30m")`); v != 1.0 {
				t.Errorf("count input = %v, want 1", v)
			}
		}},
		{"mobile visitor on a phone", "segment=mobile_visitor&path=" + url.QueryEscape("/shop?utm=spring"), []string{"User-Agent", iphoneUA}, 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "true")
			want(t, m, "agree", true)
			want(t, m["request"].(map[string]any), "device", "mobile")
			want(t, m["request"].(map[string]any), "path", "/shop")
			if v, _ := inputValue(m, "request.device"); v != "mobile" {
				t.Errorf("request.device input = %v", v)
			}
		}},
		{"not a mobile visitor on a desktop", "segment=mobile_visitor", []string{"User-Agent", desktopUA}, 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "false")
			want(t, m, "agree", true)
			want(t, m["module"].(map[string]any), "member", false)
			steps := m["steps"].([]any)
			if last := steps[len(steps)-1].(map[string]any); last["expr"] != `request.device == "mobile"` || last["value"] != false {
				t.Errorf("last step = %v", last)
			}
		}},
		{"another user by id: no events", "segment=cart_abandoner&user_id=nobody-" + user, nil, 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "false")
			want(t, m, "agree", true)
			want(t, m, "user_from", "user_id")
			if v, _ := inputValue(m, `count("add_to_cart", "30m")`); v != 0.0 {
				t.Errorf("count input = %v, want 0", v)
			}
		}},
		{"unknown segment", "segment=nope", nil, 404, func(t *testing.T, m map[string]any) {
			if segs, _ := m["segments"].([]any); len(segs) != 4 {
				t.Errorf("segments = %v", m["segments"])
			}
		}},
		{"no segment", "", nil, 400, nil},
	} {
		t.Run("edge: "+tc.name, func(t *testing.T) {
			code, m := explainJSON(t, edge+tc.query, cookie, append([]string{"Segedge-Debug", "dbg-token"}, tc.hdr...)...)
			if code != tc.status {
				t.Fatalf("status = %d, want %d: %v", code, tc.status, m)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
	// Without the debug token, the path is the site's: proxied, nothing about segments.
	for _, tok := range []string{"", "wrong"} {
		res, body := get(t, edge+"segment=cart_abandoner", cookie, "Segedge-Debug", tok)
		if res.StatusCode != 200 || !strings.Contains(body, "<title>shop</title>") || strings.Contains(body, "cart_abandoner") {
			t.Errorf("token %q: %d %q, want the upstream's page", tok, res.StatusCode, body)
		}
	}

	origin := sys.originURL + "/v1/users/" + url.PathEscape(user) + "/explain?segment="
	for _, tc := range []struct {
		segment, token string
		status         int
		check          func(t *testing.T, m map[string]any)
	}{
		{"cart_abandoner", "admin-secret", 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "true")
			want(t, m, "agree", true)
			want(t, m["stored"].(map[string]any), "member", true)
			if v, _ := inputValue(m, `count("purchase_completed", "30m")`); v != 0.0 {
				t.Errorf("purchase count = %v, want 0", v)
			}
		}},
		{"mobile_visitor", "admin-secret", 200, func(t *testing.T, m map[string]any) {
			want(t, m, "result", "error: needs a request")
			want(t, m, "agree", true)
		}},
		{"buyer", "read-secret", 403, nil},
	} {
		t.Run("origin: "+tc.segment, func(t *testing.T) {
			code, m := explainJSON(t, origin+tc.segment, "", "Authorization", "Bearer "+tc.token)
			if code != tc.status {
				t.Fatalf("status = %d, want %d: %v", code, tc.status, m)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
	if n := counter(sys.originURL, "segedge_origin_explain_disagreements_total"); n != 0 {
		t.Errorf("origin disagreements = %v", n)
	}
	if n := counter(sys.edgeOpsURL, "segedge_edge_explain_disagreements_total"); n != 0 {
		t.Errorf("edge disagreements = %v", n)
	}
}

func want(t *testing.T, m map[string]any, key string, v any) {
	t.Helper()
	if m[key] != v {
		t.Errorf("%s = %#v, want %#v", key, m[key], v)
	}
}
