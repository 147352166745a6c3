package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A new ruleset fills its segments for the profiles already stored, without new events, and
// GET /v1/rescan says how far that is: every partition's marker, complete once all name the
// active version. Like every user endpoint it needs the admin token or the read key.
func TestANewRulesetsSegmentsFillAndTheRescanEndpointSaysWhenDone(t *testing.T) {
	sys := startSystem(t, services{external: true}, siteUpstream(t).URL)
	// Version 1 keeps page_view counts (a profile keeps what the active rules read).
	putRulesText(t, sys, "segments:\n  - name: reader\n    rule: count(\"page_view\", \"30m\") > 1\n")
	waitSegmentListed(t, sys.originURL, "admin-secret", "reader")

	const users = 30
	var b strings.Builder
	for i := range users {
		fmt.Fprintf(&b, `{"event_id":"rs-%d","user_id":"rescan-user-%d","type":"page_view"}`+"\n", i, i)
	}
	req, _ := http.NewRequest("POST", sys.originURL+"/v1/events", strings.NewReader(b.String()))
	req.Header.Set("Authorization", "Bearer write-secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 202 {
		t.Fatalf("POST /v1/events: %d", res.StatusCode)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !userExists(t, sys, fmt.Sprintf("rescan-user-%d", users-1)) {
		if time.Now().After(deadline) {
			t.Fatal("the events were never applied")
		}
		time.Sleep(20 * time.Millisecond)
	}

	putRulesText(t, sys, "segments:\n  - name: reader\n    rule: count(\"page_view\", \"30m\") > 1\n"+
		"  - name: visitor\n    rule: count(\"page_view\", \"30m\") > 0\n")
	if !waitMembersAt(t, sys.originURL, "admin-secret", "visitor", users) {
		_, body := call(t, "GET", sys.originURL+"/v1/rescan", "admin-secret", "")
		t.Fatalf("the new segment never filled; rescan progress: %s", body)
	}

	type progress struct {
		Ruleset        uint64 `json:"ruleset"`
		Complete       bool   `json:"complete"`
		PartitionsDone int    `json:"partitions_done"`
		Partitions     []struct {
			Partition int    `json:"partition"`
			Rescanned uint64 `json:"rescanned"`
			Done      bool   `json:"done"`
		} `json:"partitions"`
		Origin struct {
			Done int64 `json:"done"`
		} `json:"origin"`
	}
	var p progress
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, body := call(t, "GET", sys.originURL+"/v1/rescan", "admin-secret", "")
		if code != 200 {
			t.Fatalf("GET /v1/rescan: %d %s", code, body)
		}
		if err := json.Unmarshal([]byte(body), &p); err != nil {
			t.Fatalf("GET /v1/rescan: %v in %s", err, body)
		}
		if p.Complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rescan never complete: %s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.Ruleset != 2 || p.PartitionsDone != len(p.Partitions) || len(p.Partitions) == 0 || p.Origin.Done < users {
		t.Fatalf("progress = %+v, want ruleset 2 done on every partition after at least %d re-evaluations", p, users)
	}
	for _, pr := range p.Partitions {
		if pr.Rescanned != 2 || !pr.Done {
			t.Fatalf("partition %+v not rescanned under ruleset 2", pr)
		}
	}
	if code, _ := call(t, "GET", sys.originURL+"/v1/rescan", "", ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/rescan without a token: %d, want 401", code)
	}
}

func userExists(t *testing.T, sys *system, user string) bool {
	code, _ := call(t, "GET", sys.originURL+"/v1/users/"+user, "admin-secret", "")
	return code == 200
}
