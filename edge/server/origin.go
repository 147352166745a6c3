package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/segedge/segedge/core/delta"
)

// originClient asks the origin about users the replica does not hold.
type originClient struct {
	base  string
	token string
	http  *http.Client
}

func newOriginClient(base, token string) *originClient {
	return &originClient{base: base, token: token, http: &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second},
	}}
}

// fetch returns the user's snapshot as a delta, nil for a user the origin never published.
func (c *originClient) fetch(ctx context.Context, user string) (*delta.Delta, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/user/segments?features=1&user_id="+url.QueryEscape(user), nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("origin look-up: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("origin look-up: %w", err)
	}
	switch res.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("origin look-up: status %d", res.StatusCode)
	}
	var ans struct {
		Segments []string             `json:"segments"`
		Version  uint64               `json:"version"`
		Ruleset  uint64               `json:"ruleset"`
		Features []delta.FeatureValue `json:"features"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("origin look-up: %w", err)
	}
	return &delta.Delta{UserID: user, Version: ans.Version, Ruleset: ans.Ruleset, Members: ans.Segments, Features: ans.Features}, nil
}
