package rules

import "time"

// File is a parsed rules file.
type File struct {
	Name     string // file name used in error messages
	Segments []SegmentDef
	Scores   []ScoreDef
	Triggers []TriggerDef
	Slots    []SlotDef
	Tests    []TestDef
	Modules  []ModuleDef
}

// Pos is a 1-based line and column in the rules file.
type Pos struct{ Line, Col int }

// SegmentDef is one entry of "segments".
type SegmentDef struct {
	Name        string
	Rule        string
	Description string
	Pos         Pos // of the entry
	RulePos     Pos // of the rule text
}

// ScoreDef is one entry of "scores": a decayed score fed by weighted event types.
type ScoreDef struct {
	Name     string
	HalfLife time.Duration
	Weights  map[string]float64
	Pos      Pos
}

// TriggerKind says when a trigger fires.
type TriggerKind string

const (
	TriggerEnter     TriggerKind = "enter"     // the user enters Segment
	TriggerExit      TriggerKind = "exit"      // the user leaves Segment
	TriggerThreshold TriggerKind = "threshold" // Expr turns from false to true
)

// TriggerDef is one entry of "triggers".
type TriggerDef struct {
	Name    string
	On      string // as written
	Kind    TriggerKind
	Segment string // enter/exit
	Expr    string // threshold: a boolean rule expression
	Webhook string
	Pos     Pos
}

// SlotDef is one entry of "slots".
type SlotDef struct {
	Name     string
	Variants []VariantDef
	Pos      Pos
}

// VariantDef is one variant of a slot: shown when segment When is a member. Exactly one of
// HTML and Fragment is set.
type VariantDef struct {
	When     string
	HTML     string
	Fragment string
	Pos      Pos
}

// TestDef is one entry of "tests": a profile and request, and the memberships (and slot
// choices) expected for them.
type TestDef struct {
	Profile     TestProfile
	Request     *TestRequest // nil: no request (origin-side evaluation)
	Expect      map[string]bool
	ExpectSlots map[string]int // slot → variant index, -1 = "default"
	Pos         Pos
}

// TestProfile gives feature values by the same syntax as rule calls.
type TestProfile struct {
	Traits map[string]any     // trait name → bool, int64, float64 or string
	Counts map[string]int64   // `add_to_cart 30m` or count("add_to_cart","30m") form, see README
	Sums   map[string]float64 // `purchase_completed amount 7d`
	Since  map[string]int64   // event type → seconds
	Scores map[string]float64
}

// TestRequest is the request context of a test.
type TestRequest struct {
	Path, Country, Device string
	Hour, Bucket          int
	Query                 map[string]string
	Headers               map[string]string
	Cookies               map[string]string
}

// ModuleDef is one entry of "modules": a hand-written wasm module computing some segments.
type ModuleDef struct {
	Path     string
	Segments []string
	Features []string // as written, e.g. count("add_to_cart","30m")
	Pos      Pos
}
