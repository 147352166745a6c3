// Package trigger fires the rules file's triggers and delivers them as signed webhooks.
//
// Firing and delivery are split on purpose. The Firer runs on the origin's event path (the engine
// calls Fire before it acknowledges the event), so it only publishes each firing to the JetStream
// stream TRIGGERS and waits for the stream's ack: no HTTP, no waiting on a slow receiver. The
// Dispatcher consumes TRIGGERS with a durable pull consumer shared by every origin of one
// installation and POSTs each firing to its webhook, retrying with backoff and finally moving it
// to TRIGGERS_DLQ. Each firing has a stable id (<trigger>/<user>/<delta version>): JetStream drops
// a republish of it within its duplicate window, and a receiver can dedupe the at-least-once
// deliveries by the X-Segedge-Delivery header.
package trigger

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Kind says which membership change fires a trigger.
type Kind int

const (
	// Enter fires when the user joins the segment. A threshold trigger such as
	// score("engagement") > 80 is compiled into a hidden segment, so crossing upward is entering it.
	Enter Kind = iota + 1
	// Exit fires when the user leaves the segment.
	Exit
	// Threshold fires when the trigger's expression (a boolean rule, e.g.
	// score("engagement") > 80) turns from false to true for a user: once per crossing, not on
	// every event while it stays true.
	Threshold
)

func (k Kind) String() string {
	switch k {
	case Enter:
		return "enter"
	case Exit:
		return "exit"
	case Threshold:
		return "threshold"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Trigger is one entry of the rules file's triggers list.
type Trigger struct {
	// Name is the trigger's name; it becomes the last token of its NATS subject, so it is limited
	// to letters, digits, '_' and '-'.
	Name    string
	On      Kind
	Segment string // Enter and Exit
	// Expr is a Threshold trigger's condition, a boolean rule over profile features.
	Expr string
	// Webhook is the http(s) URL the firing is POSTed to.
	Webhook string
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// Validate checks one trigger: its name is a valid subject token, its kind is known, it names a
// segment, and its webhook passes ValidateWebhook with allow.
func (t Trigger) Validate(allow []string) error {
	if !nameRE.MatchString(t.Name) {
		return fmt.Errorf("trigger %q: name must be 1-128 letters, digits, '_' or '-'", t.Name)
	}
	switch t.On {
	case Enter, Exit:
		if t.Segment == "" {
			return fmt.Errorf("trigger %q: no segment", t.Name)
		}
	case Threshold:
		if strings.TrimSpace(t.Expr) == "" {
			return fmt.Errorf("trigger %q: threshold without a condition", t.Name)
		}
	default:
		return fmt.Errorf("trigger %q: on must be enter, exit or a condition, got %v", t.Name, t.On)
	}
	if err := ValidateWebhook(t.Webhook, allow); err != nil {
		return fmt.Errorf("trigger %q: %w", t.Name, err)
	}
	return nil
}

// ValidateTriggers checks every trigger and that no name is used twice.
func ValidateTriggers(ts []Trigger, allow []string) error {
	seen := make(map[string]bool, len(ts))
	var errs []error
	for _, t := range ts {
		if err := t.Validate(allow); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[t.Name] {
			errs = append(errs, fmt.Errorf("trigger %q: defined twice", t.Name))
		}
		seen[t.Name] = true
	}
	return errors.Join(errs...)
}

// ParseOn parses the rules file's `on:` value: enter("segment") or exit("segment"). A threshold
// condition is not accepted here: core/rules parses it (TriggerThreshold) and SetRulesFile
// compiles it.
func ParseOn(s string) (Kind, string, error) {
	s = strings.TrimSpace(s)
	open := strings.IndexByte(s, '(')
	if open < 0 || !strings.HasSuffix(s, ")") {
		return 0, "", fmt.Errorf("trigger on %q: want enter(\"segment\") or exit(\"segment\")", s)
	}
	var k Kind
	switch strings.TrimSpace(s[:open]) {
	case "enter":
		k = Enter
	case "exit":
		k = Exit
	default:
		return 0, "", fmt.Errorf("trigger on %q: want enter(\"segment\") or exit(\"segment\")", s)
	}
	arg := strings.TrimSpace(s[open+1 : len(s)-1])
	if len(arg) < 2 || arg[0] != '"' {
		return 0, "", fmt.Errorf("trigger on %q: the segment must be a double-quoted string", s)
	}
	seg, err := strconv.Unquote(arg)
	if err != nil {
		return 0, "", fmt.Errorf("trigger on %q: the segment must be a double-quoted string: %v", s, err)
	}
	if seg == "" {
		return 0, "", fmt.Errorf("trigger on %q: empty segment name", s)
	}
	return k, seg, nil
}

// Topology names derived from bus.Topology's prefix; core/bus only names the trigger subject.

func streamName(prefix string) string    { return strings.ToUpper(prefix) + "TRIGGERS" }
func dlqStreamName(prefix string) string { return strings.ToUpper(prefix) + "TRIGGERS_DLQ" }
func dlqSubject(prefix, name string) string {
	return strings.ToLower(prefix) + "seg.triggers_dlq." + name
}
