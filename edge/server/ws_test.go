package server

import (
	"testing"

	"github.com/segedge/segedge/edge/push"
)

func TestStreamIDs(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want streamPos
	}{
		{"", streamPos{}},
		{"7", streamPos{version: 7}},
		{"7.3", streamPos{version: 7, ruleset: 3, rulesetKnown: true}},
		{"7.x", streamPos{version: 7}},
		{"x.3", streamPos{}},
		{"-1", streamPos{}},
	} {
		if got := parseID([]byte(tc.id)); got != tc.want {
			t.Errorf("parseID(%q) = %+v, want %+v", tc.id, got, tc.want)
		}
	}
	if got := string(appendID(nil, 12, 4)); got != "12.4" {
		t.Errorf("appendID = %q", got)
	}
}

// What a (re)connecting client at a position is sent first, and which later messages go.
func TestStreamSendsEachStateOnce(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pos       streamPos
		v, rs     uint64
		wantFirst bool
	}{
		{"fresh client", streamPos{}, 5, 1, true},
		{"fresh client, user without state", streamPos{}, 0, 1, true},
		{"has this state", streamPos{5, 1, true}, 5, 1, false},
		{"has an older version", streamPos{4, 1, true}, 5, 1, true},
		{"has it under another ruleset", streamPos{5, 1, true}, 5, 2, true},
		{"bare version, same", streamPos{version: 5}, 5, 2, false},
		{"bare version, older", streamPos{version: 4}, 5, 2, true},
	} {
		pos := tc.pos
		if got := sendFirst(&pos, tc.v, tc.rs); got != tc.wantFirst {
			t.Errorf("%s: sendFirst = %v, want %v", tc.name, got, tc.wantFirst)
		}
	}
	pos := streamPos{version: 5, ruleset: 1, rulesetKnown: true}
	for _, tc := range []struct {
		m    push.Message
		want bool
	}{
		{push.Message{ID: 5, Ruleset: 1}, false}, // already sent
		{push.Message{ID: 4, Ruleset: 2}, false}, // older
		{push.Message{ID: 5, Ruleset: 2}, true},  // new ruleset
		{push.Message{ID: 5, Ruleset: 2}, false}, // twice
		{push.Message{ID: 6, Ruleset: 2}, true},  // new version
		{push.Message{ID: 0, Ruleset: 3}, true},  // a user without any state (version 0) always gets it
	} {
		if got := newer(tc.m, &pos); got != tc.want {
			t.Errorf("newer(%+v) = %v, want %v (pos now %+v)", tc.m, got, tc.want, pos)
		}
	}
}
