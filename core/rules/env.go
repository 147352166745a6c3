package rules

import (
	"fmt"
	"regexp"
	"strconv"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// Vocabulary function names, as written in rules.
const (
	fnTrait     = "trait"
	fnHasTrait  = "hasTrait"
	fnScore     = "score"
	fnCount     = "count"
	fnSum       = "sum"
	fnSince     = "since"
	fnSegment   = "segment"
	fnQuery     = "request.query"
	fnHeader    = "request.header"
	fnCookie    = "request.cookie"
	fnHasQuery  = "request.hasQuery"
	fnHasHeader = "request.hasHeader"
	fnHasCookie = "request.hasCookie"
)

// Request fields read as variables (request.path, ...).
const (
	FieldPath    = "path"
	FieldCountry = "country"
	FieldDevice  = "device"
	FieldHour    = "hour"
	FieldBucket  = "bucket"
	FieldQuery   = "query"
	FieldHeader  = "header"
	FieldCookie  = "cookie"
)

// binder supplies the implementations of the vocabulary to a cel-go program. The compiler's
// environment has none (it only type-checks); the reference evaluator's does.
type binder interface {
	feature(fn string, args []ref.Val) ref.Val
}

// newEnv declares the rule vocabulary. With b nil, functions are declared but not bound.
func newEnv(b binder) (*cel.Env, error) {
	bind := func(fn string) []cel.OverloadOpt {
		if b == nil {
			return nil
		}
		return []cel.OverloadOpt{cel.FunctionBinding(func(args ...ref.Val) ref.Val { return b.feature(fn, args) })}
	}
	unary := func(fn string, res *cel.Type) cel.EnvOption {
		return cel.Function(fn, cel.Overload(fn+"_string", []*cel.Type{cel.StringType}, res, bind(fn)...))
	}
	opts := []cel.EnvOption{
		cel.ClearMacros(),
		cel.CrossTypeNumericComparisons(true),
		unary(fnTrait, cel.DynType),
		unary(fnHasTrait, cel.BoolType),
		unary(fnScore, cel.DoubleType),
		cel.Function(fnCount, cel.Overload("count_string_string", []*cel.Type{cel.StringType, cel.StringType}, cel.IntType, bind(fnCount)...)),
		cel.Function(fnSum, cel.Overload("sum_string_string_string", []*cel.Type{cel.StringType, cel.StringType, cel.StringType}, cel.DoubleType, bind(fnSum)...)),
		unary(fnSince, cel.IntType),
		unary(fnSegment, cel.BoolType),
		unary(fnQuery, cel.StringType),
		unary(fnHeader, cel.StringType),
		unary(fnCookie, cel.StringType),
		unary(fnHasQuery, cel.BoolType),
		unary(fnHasHeader, cel.BoolType),
		unary(fnHasCookie, cel.BoolType),
	}
	for _, f := range []struct {
		name string
		t    *cel.Type
	}{{FieldPath, cel.StringType}, {FieldCountry, cel.StringType}, {FieldDevice, cel.StringType}, {FieldHour, cel.IntType}, {FieldBucket, cel.IntType}} {
		opts = append(opts, cel.Variable("request."+f.name, f.t))
	}
	return cel.NewEnv(opts...)
}

var windowRE = regexp.MustCompile(`^([0-9]+)([a-zA-Z]*)$`)

// Window limits: a count or sum window is at least a minute (the profile's finest buckets are
// 10 s, so shorter windows would be mostly rounding) and at most the 90-day retention.
const (
	MinWindow = time.Minute
	MaxWindow = 90 * 24 * time.Hour
)

// ParseWindow parses an event window literal: a positive integer followed by s, m, h or d.
func ParseWindow(s string) (time.Duration, error) {
	m := windowRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("bad event window %q; write a number and a unit, like \"30m\" or \"7d\"", s)
	}
	var unit time.Duration
	switch m[2] {
	case "s":
		unit = time.Second
	case "m":
		unit = time.Minute
	case "h":
		unit = time.Hour
	case "d":
		unit = 24 * time.Hour
	default:
		return 0, fmt.Errorf("unknown event window %q; use s, m, h or d", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n > int64(MaxWindow/unit) {
		return 0, fmt.Errorf("event window %q is too long; use at most 90d", s)
	}
	d := time.Duration(n) * unit
	if d < MinWindow {
		return 0, fmt.Errorf("event window %q is too short; use at least 1m", s)
	}
	if d > MaxWindow {
		return 0, fmt.Errorf("event window %q is too long; use at most 90d", s)
	}
	return d, nil
}

// errVal makes a cel-go error value.
func errVal(format string, args ...any) ref.Val { return types.NewErr(format, args...) }
