package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// cookieOf returns the segedge_uid value set by res, or "".
func cookieOf(res *http.Response) string {
	for _, c := range res.Cookies() {
		if c.Name == "segedge_uid" {
			return c.Value
		}
	}
	return ""
}

func get(t *testing.T, url, cookie string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if cookie != "" {
		req.Header.Set("Cookie", "segedge_uid="+cookie)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

func TestVisitorCookieIsIssuedSignedAndNeverTrustedWhenForged(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL)
	res, _ := get(t, sys.edgeURL+"/page", "")
	c := cookieOf(res)
	if len(c) != 66 {
		t.Fatalf("cookie %q, want a 66-byte signed value", c)
	}
	var sc string
	for _, v := range res.Header.Values("Set-Cookie") {
		if strings.HasPrefix(v, "segedge_uid=") {
			sc = v
		}
	}
	for _, attr := range []string{"HttpOnly", "SameSite=Lax", "Path=/"} {
		if !strings.Contains(sc, attr) {
			t.Errorf("Set-Cookie %q lacks %s", sc, attr)
		}
	}
	// The same cookie comes back: no new one.
	if res, _ := get(t, sys.edgeURL+"/page", c); cookieOf(res) != "" {
		t.Errorf("a valid cookie was replaced")
	}
	// A tampered cookie (another id, same signature) is replaced by a fresh one.
	forged := "AAAAAAAAAAAAAAAAAAAAAA" + c[22:]
	res, _ = get(t, sys.edgeURL+"/page", forged)
	if nc := cookieOf(res); nc == "" || nc == forged || nc[:22] == forged[:22] {
		t.Fatalf("forged cookie not replaced: got %q", nc)
	}
}

func TestBeaconWritesOnlyTheVisitorsOwnEvents(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL)
	res, _ := get(t, sys.edgeURL+"/page", "")
	c := cookieOf(res)
	id := c[:22]

	post := func(body string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", sys.edgeURL+"/v1/events", strings.NewReader(body))
		req.Header.Set("Cookie", "segedge_uid="+c)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var ans map[string]any
		json.NewDecoder(res.Body).Decode(&ans)
		return res.StatusCode, ans
	}
	code, ans := post(`[{"event_id":"b1","type":"page_view"},{"event_id":"b2","user_id":"someone_else","type":"page_view"},{"event_id":"b3","type":"add_to_cart","props":{"amount":5}}]`)
	if code != 202 || ans["accepted"] != float64(2) {
		t.Fatalf("beacon answer %d %v, want 202 with 2 accepted and the other user's event refused", code, ans)
	}
	// The origin applied exactly the visitor's two events to the visitor's profile.
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest("GET", sys.originURL+"/v1/users/"+id, nil)
		req.Header.Set("Authorization", "Bearer admin-secret")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var u struct {
			Profile struct {
				Version int `json:"version"`
			} `json:"profile"`
		}
		json.NewDecoder(res.Body).Decode(&u)
		res.Body.Close()
		if res.StatusCode == 200 && u.Profile.Version == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("profile of the visitor: %d version %d, want version 2", res.StatusCode, u.Profile.Version)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, other := range []string{"someone_else"} {
		req, _ := http.NewRequest("GET", sys.originURL+"/v1/users/"+other, nil)
		req.Header.Set("Authorization", "Bearer admin-secret")
		res, _ := http.DefaultClient.Do(req)
		res.Body.Close()
		if res.StatusCode != 404 {
			t.Fatalf("another user's profile exists (%d): the beacon wrote for someone else", res.StatusCode)
		}
	}
	if code, _ := post(`not json`); code != 400 {
		t.Fatalf("malformed beacon: %d", code)
	}
}

func TestUserSegmentsAnswersFromTheEdgeWithETag(t *testing.T) {
	sys := startSystem(t, services{}, testUpstream(t).URL)
	res, body := get(t, sys.edgeURL+"/user/segments", "")
	if res.StatusCode != 200 || !strings.Contains(res.Header.Get("Cache-Control"), "private") {
		t.Fatalf("GET /user/segments: %d %q", res.StatusCode, res.Header.Get("Cache-Control"))
	}
	var ans struct {
		Segments []string `json:"segments"`
	}
	if err := json.Unmarshal([]byte(body), &ans); err != nil || ans.Segments == nil {
		t.Fatalf("body %q: %v", body, err)
	}
	c := cookieOf(res)
	res, _ = get(t, sys.edgeURL+"/user/segments", c)
	etag := res.Header.Get("ETag")
	if res, _ := get(t, sys.edgeURL+"/user/segments", c, "If-None-Match", etag); res.StatusCode != 304 {
		t.Fatalf("If-None-Match %s: %d, want 304", etag, res.StatusCode)
	}
}

func TestSegmentStreamHeartbeatsAndLimits(t *testing.T) {
	up := testUpstream(t)
	sys := startSystem(t, services{}, up.URL, "SEGEDGE_STREAM_HEARTBEAT=100ms", "SEGEDGE_STREAM_MAX_PER_USER=1")
	res, _ := get(t, sys.edgeURL+"/page", "")
	c := cookieOf(res)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", sys.edgeURL+"/user/segments/stream", nil)
	req.Header.Set("Cookie", "segedge_uid="+c)
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if ct := stream.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("content type %q", ct)
	}
	r := bufio.NewReader(stream.Body)
	var sawData, sawHeartbeat bool
	for !(sawData && sawHeartbeat) {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v (data %v, heartbeat %v)", err, sawData, sawHeartbeat)
		}
		sawData = sawData || strings.HasPrefix(line, "data: {")
		sawHeartbeat = sawHeartbeat || strings.HasPrefix(line, ": heartbeat")
	}
	// A second stream for the same visitor is over the per-user limit.
	if res, _ := get(t, sys.edgeURL+"/user/segments/stream", c); res.StatusCode != 503 {
		t.Fatalf("second stream: %d, want 503", res.StatusCode)
	}
	_ = fmt.Sprint
}
