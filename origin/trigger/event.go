package trigger

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event types of firings.
const (
	TypeEnter = "dev.segedge.trigger.enter"
	TypeExit  = "dev.segedge.trigger.exit"
	// TypeThreshold is a threshold trigger's condition turning true.
	TypeThreshold = "dev.segedge.trigger.threshold"
	// Source is the CloudEvents source of every firing.
	Source = "segedge/origin"
	// ContentType is the Content-Type of a webhook POST (CloudEvents structured mode).
	ContentType = "application/cloudevents+json"
)

// Event is a firing as a CloudEvents 1.0 structured-mode JSON document. It is the body of the
// TRIGGERS message and, unchanged, of the webhook POST, so the signature covers exactly it.
type Event struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	Data            EventData `json:"data"`
}

// EventData is the firing itself.
type EventData struct {
	Trigger string `json:"trigger"`
	// Segment is the segment entered or exited; empty for a threshold trigger.
	Segment string `json:"segment"`
	// Condition is a threshold trigger's expression, as written in the rules file.
	Condition string `json:"condition,omitempty"`
	UserID    string `json:"user_id"`
	// Version is the user's delta version that fired the trigger.
	Version uint64 `json:"version"`
	// Ruleset is the ruleset version that evaluated the membership.
	Ruleset uint64 `json:"ruleset"`
	// Members are all segments the user is in after the change.
	Members []string `json:"members"`
}

// FiringID is the stable id of a firing: the same trigger, user and delta version always give
// the same id, so JetStream's duplicate window and receivers can drop redeliveries.
func FiringID(trigger, user string, version uint64) string {
	return fmt.Sprintf("%s/%s/%d", trigger, user, version)
}

// DecodeEvent parses a firing body and checks the fields the Dispatcher and receivers rely on.
func DecodeEvent(b []byte) (*Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode trigger event: %w", err)
	}
	switch {
	case e.SpecVersion != "1.0":
		return nil, fmt.Errorf("decode trigger event: specversion %q, want 1.0", e.SpecVersion)
	case e.ID == "":
		return nil, errors.New("decode trigger event: no id")
	case e.Type != TypeEnter && e.Type != TypeExit && e.Type != TypeThreshold:
		return nil, fmt.Errorf("decode trigger event: unknown type %q", e.Type)
	case e.Data.Trigger == "":
		return nil, errors.New("decode trigger event: no data.trigger")
	}
	return &e, nil
}
