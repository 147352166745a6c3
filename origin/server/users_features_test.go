package server

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/segedge/segedge/core/delta"
	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/origin/members"
	"github.com/segedge/segedge/origin/store"
	"github.com/segedge/segedge/origin/store/memory"
)

// An edge merges a user's later deltas, which list only the features that changed, into the
// origin's answer for the user: so the answer's features are those of the membership record
// (what every edge that followed DELTAS holds at that version), not values computed from the
// profile now, which may already be half of the next version.
func TestTheUsersFeaturesAnswerIsTheRecordedStateOfItsVersion(t *testing.T) {
	o := newTestOrigin(t)
	mem := members.NewMemory()
	o.members, o.store = mem, memory.New(store.Options{})
	recorded := []delta.FeatureValue{{Key: "trait:plan", Value: profile.StringValue("free")}}
	if err := mem.Put(context.Background(), "alice", members.Record{Version: 5, Members: []string{"a"}, Features: recorded, FeaturesKnown: true}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", o.url+"/v1/users/alice/segments?features=1", nil)
	req.Header.Set("Authorization", "Bearer at")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var ans userSegments
	if err := json.NewDecoder(res.Body).Decode(&ans); err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || ans.Version != 5 || len(ans.Features) != 1 || ans.Features[0] != recorded[0] {
		t.Fatalf("answer %d %+v, want version 5 with the recorded plan", res.StatusCode, ans)
	}
}
