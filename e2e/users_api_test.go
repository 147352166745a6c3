package e2e

// HTTP-level tests of the origin's user endpoints and the keys that open them, against a real
// origin process with the real Redis and NATS: which of the admin token, the read-only key
// (SEGEDGE_READ_KEY) and the write key each route takes, the erasure of a user over
// DELETE /v1/users/{id}, GET /user/segments for backends, and the ingest size limits.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/event"
)

const (
	usersReadKey = "users-read"
	usersRules   = "segments:\n  - name: viewer\n    rule: count(\"page_view\", \"30m\") > 0\n"
)

// usersOrigin starts one origin (admin token, write key and read key set) with usersRules
// active, and returns it.
func usersOrigin(t *testing.T) *chaosOrigin {
	t.Helper()
	o := newChaosOrigin(t, "")
	o.env = append(o.env, "SEGEDGE_READ_KEY="+usersReadKey)
	o.start(t)
	pushRuleset(t, o.url(), chaosAdminToken, usersRules)
	waitSegmentListed(t, o.url(), chaosAdminToken, "viewer")
	return o
}

// call sends one request with "Authorization: Bearer token" (none when token is empty) and
// returns the status code and body.
func call(t *testing.T, method, u, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// viewUntilMember sends a page_view for user and waits until the origin lists the user in
// viewer.
func viewUntilMember(t *testing.T, o *chaosOrigin, user string) {
	t.Helper()
	ev := fmt.Sprintf(`[{"event_id":"%s-view","user_id":"%s","type":"page_view"}]`, user, user)
	if code, body := call(t, "POST", o.url()+"/v1/events", chaosWriteKey, ev); code != 202 {
		t.Fatalf("POST /v1/events: %d %s", code, body)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if segs, code := segmentsOf(t, o.url()+"/v1/users/"+url.PathEscape(user)+"/segments"); code == 200 && slices.Contains(segs, "viewer") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never entered viewer", user)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// segmentsOf reads a user's segments (with the read key) from either segments endpoint.
func segmentsOf(t *testing.T, u string) ([]string, int) {
	t.Helper()
	code, body := call(t, "GET", u, usersReadKey, "")
	var ans struct {
		Segments []string `json:"segments"`
	}
	if code == 200 || code == 404 {
		if err := json.Unmarshal([]byte(body), &ans); err != nil {
			t.Fatalf("GET %s: %v in %q", u, err, body)
		}
	}
	return ans.Segments, code
}

// Each route takes exactly the keys meant for it: the read key reads users and segments but
// changes nothing, the write key only sends events, the admin token does everything but send
// events. No token is 401 (with a challenge), a token that is not the route's is 403.
func TestEachRouteTakesOnlyItsKeys(t *testing.T) {
	o := usersOrigin(t)
	const user = "matrix-user"
	viewUntilMember(t, o, user)

	const (
		admin = chaosAdminToken
		read  = usersReadKey
		write = chaosWriteKey
		wrong = "not-a-key"
		none  = ""
	)
	type route struct{ method, path, body string }
	var (
		getUser     = route{"GET", "/v1/users/" + user, ""}
		getSegs     = route{"GET", "/v1/users/" + user + "/segments", ""}
		backendSegs = route{"GET", "/user/segments?user_id=" + user, ""}
		listSegs    = route{"GET", "/v1/segments", ""}
		rescan      = route{"GET", "/v1/rescan", ""}
		// An id that never had a profile: the admin row erases nothing the other tests read.
		deleteUser = route{"DELETE", "/v1/users/matrix-erased", ""}
		putRules   = route{"PUT", "/v1/rulesets", usersRules}
		explain    = route{"GET", "/v1/users/" + user + "/explain?segment=viewer", ""}
		purge      = route{"POST", "/v1/invalidate", `{"urls":["/matrix"]}`}
		events     = route{"POST", "/v1/events", `[{"event_id":"matrix-ev","user_id":"matrix-other","type":"page_view"}]`}
	)
	tests := []struct {
		route route
		token string
		want  int
	}{
		// Reading users and segments: the admin token or the read key.
		{getUser, admin, 200}, {getUser, read, 200}, {getUser, write, 403}, {getUser, wrong, 403}, {getUser, none, 401},
		{getSegs, admin, 200}, {getSegs, read, 200}, {getSegs, write, 403}, {getSegs, wrong, 403}, {getSegs, none, 401},
		{backendSegs, admin, 200}, {backendSegs, read, 200}, {backendSegs, write, 403}, {backendSegs, wrong, 403}, {backendSegs, none, 401},
		{listSegs, admin, 200}, {listSegs, read, 200}, {listSegs, write, 403}, {listSegs, wrong, 403}, {listSegs, none, 401},
		{rescan, admin, 200}, {rescan, read, 200}, {rescan, write, 403}, {rescan, wrong, 403}, {rescan, none, 401},
		// Changing or explaining: the admin token only (PUT with it is usersOrigin's upload, 201).
		{deleteUser, read, 403}, {deleteUser, write, 403}, {deleteUser, wrong, 403}, {deleteUser, none, 401}, {deleteUser, admin, 204},
		{putRules, read, 403}, {putRules, write, 403}, {putRules, wrong, 403}, {putRules, none, 401},
		{explain, read, 403}, {explain, write, 403}, {explain, wrong, 403}, {explain, none, 401}, {explain, admin, 200},
		{purge, read, 403}, {purge, write, 403}, {purge, wrong, 403}, {purge, none, 401}, {purge, admin, 202},
		// Server-side ingest: the write key only.
		{events, admin, 403}, {events, read, 403}, {events, wrong, 403}, {events, none, 401}, {events, write, 202},
	}
	names := map[string]string{admin: "admin token", read: "read key", write: "write key", wrong: "wrong token", none: "no token"}
	for _, tt := range tests {
		t.Run(tt.route.method+" "+tt.route.path+" with "+names[tt.token], func(t *testing.T) {
			req, _ := http.NewRequest(tt.route.method, o.url()+tt.route.path, strings.NewReader(tt.route.body))
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.want {
				t.Fatalf("%d %s, want %d", res.StatusCode, strings.TrimSpace(string(b)), tt.want)
			}
			if tt.want == 401 && !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("401 without a Bearer challenge: WWW-Authenticate %q", res.Header.Get("WWW-Authenticate"))
			}
			if tt.want >= 400 && !strings.Contains(string(b), `"error"`) {
				t.Errorf("a refusal without an error message: %q", b)
			}
		})
	}
}

// A backend asks the origin GET /user/segments?user_id= and gets the same answer as
// GET /v1/users/{id}/segments: for a member, for a user never seen (404, "treat as new") and
// without an id (400).
func TestUserSegmentsAtTheOriginAnswersLikeTheUsersSegments(t *testing.T) {
	o := usersOrigin(t)
	const user = "backend-user"
	viewUntilMember(t, o, user)

	for _, tc := range []struct {
		user string
		code int
	}{{user, 200}, {"never-seen-user", 404}} {
		cq, byQuery := call(t, "GET", o.url()+"/user/segments?user_id="+url.QueryEscape(tc.user), usersReadKey, "")
		cp, byPath := call(t, "GET", o.url()+"/v1/users/"+url.PathEscape(tc.user)+"/segments", usersReadKey, "")
		if cq != tc.code || cp != tc.code {
			t.Fatalf("%s: /user/segments %d, /v1/users/{id}/segments %d; want %d from both", tc.user, cq, cp, tc.code)
		}
		if byQuery != byPath {
			t.Fatalf("%s: answers differ:\n/user/segments: %s\n/v1/users/{id}/segments: %s", tc.user, byQuery, byPath)
		}
		var ans struct {
			UserID   string   `json:"user_id"`
			Segments []string `json:"segments"`
			Version  uint64   `json:"version"`
			Ruleset  uint64   `json:"ruleset"`
		}
		if err := json.Unmarshal([]byte(byQuery), &ans); err != nil {
			t.Fatalf("%s: %v in %s", tc.user, err, byQuery)
		}
		member := tc.code == 200
		if ans.UserID != tc.user || slices.Contains(ans.Segments, "viewer") != member || (ans.Version > 0) != member || ans.Ruleset != 1 {
			t.Fatalf("%s: answer %+v, want user_id %s, member of viewer %v, ruleset 1", tc.user, ans, tc.user, member)
		}
	}
	if code, body := call(t, "GET", o.url()+"/user/segments", usersReadKey, ""); code != 400 {
		t.Fatalf("GET /user/segments without user_id: %d %s, want 400", code, body)
	}
}

// DELETE /v1/users/{id} erases the user: the profile and the memberships are gone at the origin,
// and a delta with the erase cause goes out on DELTAS so every edge forgets the user.
func TestDeletingAUserErasesProfileMembershipsAndTellsTheEdges(t *testing.T) {
	o := usersOrigin(t)
	const user, other = "erase-me", "keep-me"
	viewUntilMember(t, o, user)
	viewUntilMember(t, o, other)
	if !waitMembersAt(t, o.url(), usersReadKey, "viewer", 2) {
		t.Fatal("viewer never counted both users")
	}

	if code, body := call(t, "DELETE", o.url()+"/v1/users/"+user, chaosAdminToken, ""); code != 204 {
		t.Fatalf("DELETE /v1/users/%s: %d %s, want 204", user, code, body)
	}
	if code, body := call(t, "GET", o.url()+"/v1/users/"+user, usersReadKey, ""); code != 404 {
		t.Fatalf("GET /v1/users/%s after erasure: %d %s, want 404", user, code, body)
	}
	for _, u := range []string{"/v1/users/" + user + "/segments", "/user/segments?user_id=" + user} {
		if segs, code := segmentsOf(t, o.url()+u); len(segs) != 0 {
			t.Fatalf("GET %s after erasure: %d with segments %v, want none", u, code, segs)
		}
	}
	if !waitMembersAt(t, o.url(), usersReadKey, "viewer", 1) {
		t.Fatal("the erased user is still counted in viewer")
	}
	if code, _ := call(t, "GET", o.url()+"/v1/users/"+other, usersReadKey, ""); code != 200 {
		t.Fatalf("the other user's profile went too: %d", code)
	}

	d := eraseDelta(t, o, user)
	if !d.Erased || len(d.Members) != 0 || !slices.Equal(d.Exited, []string{"viewer"}) || d.Version < 2 {
		t.Fatalf("erase delta = %+v, want erased, no members, exited [viewer], a version after the view's", d)
	}
}

// eraseDelta waits for the delta with the erase cause for user on DELTAS and returns it.
func eraseDelta(t *testing.T, o *chaosOrigin, user string) delta.Delta {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := o.nats.JS.OrderedConsumer(ctx, o.nats.Topology.DeltasStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("read DELTAS: %v", err)
	}
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("no erase delta for %s on DELTAS: %v", user, err)
		}
		ds, err := delta.DecodeBatch(m.Data())
		if err != nil {
			t.Fatalf("DELTAS message: %v", err)
		}
		for _, d := range ds {
			if d.UserID == user && d.Cause == delta.CauseErase {
				return d
			}
		}
	}
}

// waitMembersAt waits until the origin's GET /v1/segments (asked with token) counts want
// members in segment, and says whether that happened within 10 s.
func waitMembersAt(t *testing.T, originURL, token, segment string, want int64) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := call(t, "GET", originURL+"/v1/segments", token, "")
		var list struct {
			Segments []struct {
				Name    string `json:"name"`
				Members int64  `json:"members"`
			} `json:"segments"`
		}
		if json.Unmarshal([]byte(body), &list) == nil {
			for _, s := range list.Segments {
				if s.Name == segment && s.Members == want {
					return true
				}
			}
		}
		if time.Now().After(deadline) {
			t.Logf("segment %s never had %d members: %s", segment, want, body)
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A batch of more events than the limit, or a body over the byte limit, is refused whole with
// 413 and nothing of it reaches EVENTS; a batch of exactly the limit is taken.
func TestIngestOverTheLimitsIs413AndStoresNothing(t *testing.T) {
	o := usersOrigin(t)
	lim := event.DefaultLimits()
	batch := func(n int, prefix string) string {
		var b strings.Builder
		b.WriteByte('[')
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"event_id":"%s-%d","user_id":"limit-user-%d","type":"page_view"}`, prefix, i, i%10)
		}
		b.WriteByte(']')
		return b.String()
	}
	// Valid events padded to just over the byte limit with whitespace, which JSON allows.
	small := batch(3, "big")
	oversized := small[:len(small)-1] + strings.Repeat(" ", lim.MaxBodyBytes-len(small)+1) + "]"

	before := eventsStored(t, o)
	for _, tc := range []struct{ name, body string }{
		{fmt.Sprintf("%d events, one over the limit", lim.MaxBatch+1), batch(lim.MaxBatch+1, "over")},
		{fmt.Sprintf("%d bytes, one over the limit", len(oversized)), oversized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, "POST", o.url()+"/v1/events", chaosWriteKey, tc.body)
			if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, `"error"`) {
				t.Fatalf("%d %s, want 413 with an error message", code, strings.TrimSpace(body))
			}
		})
	}
	if after := eventsStored(t, o); after != before {
		t.Fatalf("EVENTS went from sequence %d to %d: a refused batch was stored", before, after)
	}
	if code, body := call(t, "POST", o.url()+"/v1/events", chaosWriteKey, batch(lim.MaxBatch, "full")); code != 202 {
		t.Fatalf("a batch of exactly %d events: %d %s, want 202", lim.MaxBatch, code, body)
	}
}

// eventsStored is the last sequence of EVENTS: it moves with every append, whatever the
// consumers have acknowledged meanwhile.
func eventsStored(t *testing.T, o *chaosOrigin) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := o.nats.JS.Stream(ctx, o.nats.Topology.EventsStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}
