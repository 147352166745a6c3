package ruleset

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/segedge/segedge/core/profile"
	"github.com/segedge/segedge/core/rules"
)

// ruleGen writes random, well-typed rules over the whole vocabulary, and random profiles and
// requests that exercise their edge cases (absent values, kinds a rule does not expect,
// overflow, NaN and infinities, empty and multi-byte strings).
type ruleGen struct {
	r      *rand.Rand
	nSegs  int             // segments defined before the one being generated
	intern map[string]bool // request fields only ever compared with constants in this module
}

var (
	genStrings  = []string{"", "a", "ab", "b", "pro", "team", "DE", "FR", "mobile", "desktop", "/shop", "/shop/x", "é", "héllo", "x\x00y"}
	genInts     = []string{"0", "1", "-1", "2", "3", "7", "24", "100", "9223372036854775807", "-9223372036854775807"}
	genDoubles  = []string{"0.0", "1.5", "-2.5", "80.0", "0.1", "1e308", "-1e308", "3.0"}
	genTraits   = []string{"plan", "age", "vip", "ratio"}
	genEvents   = []string{"page_view", "add_to_cart"}
	genWindows  = []string{"30m", "1h", "7d"}
	genKeys     = []string{"utm", "ref"}
	genFields   = []string{"path", "country", "device"}
	cmpOps      = []string{"==", "!=", "<", "<=", ">", ">="}
	intArith    = []string{"+", "-", "*", "/", "%"}
	doubleArith = []string{"+", "-", "*", "/"}
)

func (g *ruleGen) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g *ruleGen) quote(s string) string { return fmt.Sprintf("%q", s) }

func (g *ruleGen) boolExpr(d int) string {
	return "(" + g.boolExpr1(d) + ")"
}

func (g *ruleGen) boolExpr1(d int) string {
	if d <= 0 {
		switch g.r.IntN(6) {
		case 0:
			return g.pick([]string{"true", "false"})
		case 1:
			if g.nSegs > 0 {
				return fmt.Sprintf("segment(\"s%d\")", g.r.IntN(g.nSegs))
			}
			return "hasTrait(" + g.quote(g.pick(genTraits)) + ")"
		case 2:
			return fmt.Sprintf("request.has%s(%q)", g.pick([]string{"Query", "Header", "Cookie"}), g.pick(genKeys))
		case 3:
			return fmt.Sprintf("trait(%q)", g.pick(genTraits)) // dyn in a bool position
		case 4:
			return g.internCompare()
		default:
			return g.intExpr(0) + " " + g.pick(cmpOps) + " " + g.intExpr(0)
		}
	}
	switch g.r.IntN(13) {
	case 0:
		return g.boolExpr(d-1) + " && " + g.boolExpr(d-1)
	case 1:
		return g.boolExpr(d-1) + " || " + g.boolExpr(d-1)
	case 2:
		return "!" + g.boolExpr(d-1)
	case 3:
		return g.boolExpr(d-1) + " ? " + g.boolExpr(d-1) + " : " + g.boolExpr(d-1)
	case 4:
		return g.intExpr(d-1) + " " + g.pick(cmpOps) + " " + g.intExpr(d-1)
	case 5:
		return g.doubleExpr(d-1) + " " + g.pick(cmpOps) + " " + g.doubleExpr(d-1)
	case 6:
		ord := []string{"<", "<=", ">", ">="}
		if g.r.IntN(2) == 0 {
			return g.intExpr(d-1) + " " + g.pick(ord) + " " + g.doubleExpr(d-1)
		}
		return g.doubleExpr(d-1) + " " + g.pick(ord) + " " + g.intExpr(d-1)
	case 7:
		return g.strExpr(d-1) + " " + g.pick(cmpOps) + " " + g.strExpr(d-1)
	case 8:
		// dyn against any kind of operand
		other := []string{g.strExpr(d - 1), g.intExpr(d - 1), g.doubleExpr(d - 1), g.boolExpr(d - 1), fmt.Sprintf("trait(%q)", g.pick(genTraits))}
		op := g.pick([]string{"==", "!=", "<", ">="})
		return fmt.Sprintf("trait(%q) %s %s", g.pick(genTraits), op, g.pick(other))
	case 9:
		var el []string
		switch g.r.IntN(3) {
		case 0:
			for range 1 + g.r.IntN(3) {
				el = append(el, g.pick([]string{g.strExpr(0), g.intExpr(0), g.doubleExpr(0), "true"}))
			}
			return fmt.Sprintf("trait(%q) in [%s]", g.pick(genTraits), strings.Join(el, ", "))
		case 1:
			for range 1 + g.r.IntN(3) {
				el = append(el, g.strExpr(0))
			}
			return g.strExpr(d-1) + " in [" + strings.Join(el, ", ") + "]"
		default:
			for range 1 + g.r.IntN(3) {
				el = append(el, g.intExpr(0))
			}
			return g.intExpr(d-1) + " in [" + strings.Join(el, ", ") + "]"
		}
	case 10:
		return g.strExpr(d-1) + "." + g.pick([]string{"startsWith", "endsWith", "contains"}) + "(" + g.strExpr(d-1) + ")"
	case 11:
		return g.internCompare()
	default:
		return g.boolExpr1(0)
	}
}

// internCompare compares an intern-only request field with constants.
func (g *ruleGen) internCompare() string {
	var fs []string
	for f := range g.intern {
		fs = append(fs, f)
	}
	if len(fs) == 0 {
		return fmt.Sprintf("trait(%q) == %q", g.pick(genTraits), g.pick(genStrings))
	}
	f := "request." + fs[g.r.IntN(len(fs))]
	if f == "request.cookie" {
		f = fmt.Sprintf("request.cookie(%q)", g.pick(genKeys))
	}
	switch g.r.IntN(3) {
	case 0:
		return fmt.Sprintf("%s == %q", f, g.pick(genStrings))
	case 1:
		return fmt.Sprintf("%q != %s", g.pick(genStrings), f)
	default:
		return fmt.Sprintf("%s in [%q, %q]", f, g.pick(genStrings), g.pick(genStrings))
	}
}

func (g *ruleGen) intExpr(d int) string {
	if d <= 0 {
		switch g.r.IntN(7) {
		case 0, 1:
			return g.pick(genInts)
		case 2:
			return fmt.Sprintf("count(%q, %q)", g.pick(genEvents), g.pick(genWindows))
		case 3:
			return fmt.Sprintf("since(%q)", g.pick(genEvents))
		case 4:
			return "request." + g.pick([]string{"hour", "bucket"})
		case 5:
			return fmt.Sprintf("(trait(%q) + 0)", g.pick(genTraits))
		default:
			return "size(" + g.strExpr(0) + ")"
		}
	}
	switch g.r.IntN(5) {
	case 0, 1:
		return "(" + g.intExpr(d-1) + " " + g.pick(intArith) + " " + g.intExpr(d-1) + ")"
	case 2:
		return "-" + g.intExpr(d-1)
	case 3:
		return "(" + g.boolExpr(d-1) + " ? " + g.intExpr(d-1) + " : " + g.intExpr(d-1) + ")"
	default:
		return g.intExpr(0)
	}
}

func (g *ruleGen) doubleExpr(d int) string {
	if d <= 0 {
		switch g.r.IntN(5) {
		case 0, 1:
			return g.pick(genDoubles)
		case 2:
			return `score("engagement")`
		case 3:
			return fmt.Sprintf("sum(%q, \"amount\", %q)", g.pick(genEvents), g.pick(genWindows))
		default:
			return fmt.Sprintf("(trait(%q) * 1.0)", g.pick(genTraits))
		}
	}
	switch g.r.IntN(5) {
	case 0, 1:
		return "(" + g.doubleExpr(d-1) + " " + g.pick(doubleArith) + " " + g.doubleExpr(d-1) + ")"
	case 2:
		return "-" + g.doubleExpr(d-1)
	case 3:
		return "(" + g.boolExpr(d-1) + " ? " + g.doubleExpr(d-1) + " : " + g.doubleExpr(d-1) + ")"
	default:
		return g.doubleExpr(0)
	}
}

func (g *ruleGen) strExpr(d int) string {
	var plain []string
	for _, f := range genFields {
		if !g.intern[f] {
			plain = append(plain, "request."+f)
		}
	}
	switch g.r.IntN(5) {
	case 0, 1:
		return g.quote(g.pick(genStrings))
	case 2:
		if len(plain) > 0 {
			return g.pick(plain)
		}
		return g.quote(g.pick(genStrings))
	case 3:
		fn := g.pick([]string{"query", "header"})
		if !g.intern["cookie"] && g.r.IntN(3) == 0 {
			fn = "cookie"
		}
		return fmt.Sprintf("request.%s(%q)", fn, g.pick(genKeys))
	default:
		if d > 0 {
			return "(" + g.boolExpr(d-1) + " ? " + g.strExpr(d-1) + " : " + g.strExpr(d-1) + ")"
		}
		return g.quote(g.pick(genStrings))
	}
}

// file generates a rules file of n segments and a slot.
func (g *ruleGen) file(n int) *rules.File {
	g.intern = map[string]bool{}
	for _, f := range []string{"country", "device", "cookie"} {
		if g.r.IntN(2) == 0 {
			g.intern[f] = true
		}
	}
	f := &rules.File{Scores: []rules.ScoreDef{{Name: "engagement", HalfLife: time.Hour}}}
	for i := range n {
		g.nSegs = i
		f.Segments = append(f.Segments, rules.SegmentDef{Name: fmt.Sprintf("s%d", i), Rule: g.boolExpr(1 + g.r.IntN(3))})
	}
	var vs []rules.VariantDef
	for range 3 {
		vs = append(vs, rules.VariantDef{When: fmt.Sprintf("s%d", g.r.IntN(n)), HTML: "x"})
	}
	f.Slots = []rules.SlotDef{{Name: "hero", Variants: vs}}
	return f
}

// value is a random value of any kind (or absent).
func (g *ruleGen) value() (profile.Value, bool) {
	switch g.r.IntN(6) {
	case 0:
		return profile.Value{}, false
	case 1:
		return profile.BoolValue(g.r.IntN(2) == 0), true
	case 2:
		return profile.IntValue(g.int()), true
	case 3:
		return profile.DoubleValue(g.double()), true
	default:
		return profile.StringValue(g.pick(genStrings)), true
	}
}

func (g *ruleGen) int() int64 {
	return []int64{0, 1, -1, 2, 3, 5, 24, 100, math.MaxInt64, math.MinInt64, math.MaxInt64 - 1, 1 << 62, -(1 << 62), g.r.Int64N(1000) - 500}[g.r.IntN(14)]
}

func (g *ruleGen) double() float64 {
	return []float64{0, 1.5, -2.5, 80, 80.5, math.Inf(1), math.Inf(-1), math.NaN(), 1e308, 3, 9.223372036854775807e18, g.r.Float64()*200 - 100}[g.r.IntN(12)]
}

// profile returns a random profile over every feature the generator's rules read.
func (g *ruleGen) profile() testProfile {
	p := testProfile{}
	for _, t := range genTraits {
		if v, ok := g.value(); ok {
			p[profile.Feature{Kind: profile.FeatureTrait, Name: t}] = v
		}
	}
	for _, e := range genEvents {
		for _, w := range genWindows {
			win, _ := rules.ParseWindow(w)
			if g.r.IntN(4) != 0 {
				p[profile.Feature{Kind: profile.FeatureCount, Name: e, Window: win}] = profile.IntValue(g.int())
			}
			if g.r.IntN(4) != 0 {
				p[profile.Feature{Kind: profile.FeatureSum, Name: e, Prop: "amount", Window: win}] = profile.DoubleValue(g.double())
			}
		}
		if g.r.IntN(3) != 0 {
			p[profile.Feature{Kind: profile.FeatureSince, Name: e}] = profile.IntValue(g.int())
		}
	}
	if g.r.IntN(4) != 0 {
		p[profile.Feature{Kind: profile.FeatureScore, Name: "engagement"}] = profile.DoubleValue(g.double())
	}
	return p
}

// request returns a random request, or nil (no request) now and then.
func (g *ruleGen) request() *testRequest {
	if g.r.IntN(8) == 0 {
		return nil
	}
	m := func() map[string]string {
		out := map[string]string{}
		for _, k := range genKeys {
			if g.r.IntN(3) != 0 {
				out[k] = g.pick(genStrings)
			}
		}
		return out
	}
	return &testRequest{
		path: g.pick(genStrings), country: g.pick(genStrings), device: g.pick(genStrings),
		hour: g.r.IntN(24), bucket: g.r.IntN(100), query: m(), header: m(), cookie: m(),
	}
}
