package rules

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"go.yaml.in/yaml/v3"
)

// NameRE is what segment, score, trigger and slot names must match.
var NameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// MaxFileBytes bounds a rules file.
const MaxFileBytes = 4 << 20

// Parse parses a rules file in YAML or JSON (JSON is read as YAML, so both give positions).
// name is used in error messages, which have the form "name:line:col: what is wrong; what to
// do". Unknown fields are errors. Rules are not compiled here: see Compile.
func Parse(name string, data []byte) (*File, error) {
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("%s: the file has %d bytes; the limit is %d", name, len(data), MaxFileBytes)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &parser{f: &File{Name: name}}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s:1:1: the file is empty; add a segments section", name)
	}
	p.fields(doc.Content[0], "the rules file", map[string]func(*yaml.Node){
		"segments": p.segments,
		"scores":   p.scores,
		"triggers": p.triggers,
		"slots":    p.slots,
		"tests":    p.tests,
		"modules":  p.modules,
	})
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return p.f, nil
}

type parser struct {
	f    *File
	errs []error
}

func pos(n *yaml.Node) Pos { return Pos{n.Line, n.Column} }

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	if len(p.errs) < 50 {
		p.errs = append(p.errs, fmt.Errorf("%s: %s", p.f.where(pos(n)), fmt.Sprintf(format, args...)))
	}
}

// fields walks a mapping node, calling the handler of each known key.
func (p *parser) fields(n *yaml.Node, what string, handlers map[string]func(*yaml.Node)) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s must be a mapping (key: value)", what)
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		h, ok := handlers[k.Value]
		if !ok {
			var names []string
			for name := range handlers {
				names = append(names, name)
			}
			sortStrings(names)
			p.errorf(k, "unknown field %q in %s; use %s", k.Value, what, strings.Join(names, ", "))
			continue
		}
		if seen[k.Value] {
			p.errorf(k, "field %q given twice in %s; keep one", k.Value, what)
			continue
		}
		seen[k.Value] = true
		h(v)
	}
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func (p *parser) seq(n *yaml.Node, what string, each func(*yaml.Node)) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s must be a list", what)
		return
	}
	for _, c := range n.Content {
		each(deref(c))
	}
}

func (p *parser) str(n *yaml.Node, what string, dst *string) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
		p.errorf(n, "%s must be a string", what)
		return
	}
	*dst = n.Value
}

func (p *parser) name(n *yaml.Node, what string, dst *string) {
	p.str(n, what, dst)
	if *dst != "" && !NameRE.MatchString(*dst) {
		p.errorf(n, "%s %q is not a valid name; use lowercase letters, digits and _, starting with a letter, at most 63 characters", what, *dst)
	}
}

func (p *parser) required(n *yaml.Node, what string, fields ...string) {
	have := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		have[n.Content[i].Value] = true
	}
	for _, f := range fields {
		if !have[f] {
			p.errorf(n, "%s has no %s; add it", what, f)
		}
	}
}

func (p *parser) segments(n *yaml.Node) {
	p.seq(n, "segments", func(c *yaml.Node) {
		s := SegmentDef{Pos: pos(c)}
		p.fields(c, "a segment", map[string]func(*yaml.Node){
			"name":        func(v *yaml.Node) { p.name(v, "segment name", &s.Name) },
			"rule":        func(v *yaml.Node) { p.str(v, "rule", &s.Rule); s.RulePos = pos(v) },
			"description": func(v *yaml.Node) { p.str(v, "description", &s.Description) },
		})
		if c.Kind == yaml.MappingNode {
			p.required(c, "segment", "name", "rule")
		}
		p.f.Segments = append(p.f.Segments, s)
	})
}

func (p *parser) number(n *yaml.Node, what string) (float64, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
		p.errorf(n, "%s must be a number", what)
		return 0, false
	}
	v, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		p.errorf(n, "%s %q is not a finite number", what, n.Value)
		return 0, false
	}
	return v, true
}

func (p *parser) integer(n *yaml.Node, what string) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.errorf(n, "%s must be an integer", what)
		return 0, false
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil {
		p.errorf(n, "%s %q is not a 64-bit integer", what, n.Value)
		return 0, false
	}
	return v, true
}

// each walks a mapping's pairs.
func (p *parser) each(n *yaml.Node, what string, fn func(k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s must be a mapping (key: value)", what)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		fn(n.Content[i], deref(n.Content[i+1]))
	}
}

func (p *parser) scores(n *yaml.Node) {
	p.each(n, "scores", func(k, v *yaml.Node) {
		s := ScoreDef{Pos: pos(k), Weights: map[string]float64{}}
		p.name(k, "score name", &s.Name)
		p.fields(v, "score "+k.Value, map[string]func(*yaml.Node){
			"half_life": func(v *yaml.Node) {
				var w string
				p.str(v, "half_life", &w)
				d, err := ParseWindow(w)
				if err != nil {
					p.errorf(v, "half_life: %v", err)
				}
				s.HalfLife = d
			},
			"weights": func(v *yaml.Node) {
				p.each(v, "weights", func(ek, ev *yaml.Node) {
					if w, ok := p.number(ev, "weight of "+ek.Value); ok {
						s.Weights[ek.Value] = w
					}
				})
			},
		})
		if v.Kind == yaml.MappingNode {
			p.required(v, "score "+k.Value, "half_life", "weights")
		}
		p.f.Scores = append(p.f.Scores, s)
	})
}

var triggerOnRE = regexp.MustCompile(`^\s*(enter|exit)\(\s*"([^"]*)"\s*\)\s*$`)

func (p *parser) triggers(n *yaml.Node) {
	p.seq(n, "triggers", func(c *yaml.Node) {
		t := TriggerDef{Pos: pos(c)}
		p.fields(c, "a trigger", map[string]func(*yaml.Node){
			"name": func(v *yaml.Node) { p.name(v, "trigger name", &t.Name) },
			"on": func(v *yaml.Node) {
				p.str(v, "on", &t.On)
				if m := triggerOnRE.FindStringSubmatch(t.On); m != nil {
					t.Kind, t.Segment = TriggerKind(m[1]), m[2]
				} else {
					t.Kind, t.Expr = TriggerThreshold, t.On
				}
			},
			"webhook": func(v *yaml.Node) {
				p.str(v, "webhook", &t.Webhook)
				u, err := url.Parse(t.Webhook)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					p.errorf(v, "webhook %q is not an http(s) URL; write it like https://hooks.example.com/x", t.Webhook)
				}
			},
		})
		if c.Kind == yaml.MappingNode {
			p.required(c, "trigger", "name", "on")
		}
		p.f.Triggers = append(p.f.Triggers, t)
	})
}

func (p *parser) slots(n *yaml.Node) {
	p.seq(n, "slots", func(c *yaml.Node) {
		s := SlotDef{Pos: pos(c)}
		p.fields(c, "a slot", map[string]func(*yaml.Node){
			"name": func(v *yaml.Node) { p.name(v, "slot name", &s.Name) },
			"variants": func(v *yaml.Node) {
				p.seq(v, "variants", func(vc *yaml.Node) {
					vd := VariantDef{Pos: pos(vc)}
					p.fields(vc, "a variant", map[string]func(*yaml.Node){
						"when":     func(v *yaml.Node) { p.name(v, "when", &vd.When) },
						"html":     func(v *yaml.Node) { p.str(v, "html", &vd.HTML) },
						"fragment": func(v *yaml.Node) { p.str(v, "fragment", &vd.Fragment) },
					})
					if vc.Kind == yaml.MappingNode {
						p.required(vc, "variant", "when")
						if (vd.HTML == "") == (vd.Fragment == "") {
							p.errorf(vc, "a variant needs exactly one of html and fragment")
						}
						if vd.Fragment != "" && !strings.HasPrefix(vd.Fragment, "/") {
							p.errorf(vc, "fragment %q must be a path on the upstream, starting with /", vd.Fragment)
						}
					}
					s.Variants = append(s.Variants, vd)
				})
			},
		})
		if c.Kind == yaml.MappingNode {
			p.required(c, "slot", "name", "variants")
		}
		p.f.Slots = append(p.f.Slots, s)
	})
}

func (p *parser) tests(n *yaml.Node) {
	p.seq(n, "tests", func(c *yaml.Node) {
		t := TestDef{Pos: pos(c), Expect: map[string]bool{}, ExpectSlots: map[string]int{}}
		p.fields(c, "a test", map[string]func(*yaml.Node){
			"profile": func(v *yaml.Node) { p.testProfile(v, &t.Profile) },
			"request": func(v *yaml.Node) { t.Request = &TestRequest{}; p.testRequest(v, t.Request) },
			"expect": func(v *yaml.Node) {
				p.each(v, "expect", func(k, ev *yaml.Node) {
					switch {
					case ev.Kind == yaml.ScalarNode && ev.Tag == "!!bool":
						t.Expect[k.Value] = ev.Value == "true"
					case ev.Kind == yaml.ScalarNode && ev.Tag == "!!int":
						i, _ := p.integer(ev, "variant index")
						t.ExpectSlots[k.Value] = int(i)
					case ev.Kind == yaml.ScalarNode && ev.Value == "default":
						t.ExpectSlots[k.Value] = -1
					default:
						p.errorf(ev, "expect %s: write true or false for a segment, a variant index or \"default\" for a slot", k.Value)
					}
				})
			},
		})
		p.f.Tests = append(p.f.Tests, t)
	})
}

func (p *parser) testProfile(n *yaml.Node, tp *TestProfile) {
	p.fields(n, "a test profile", map[string]func(*yaml.Node){
		"traits": func(v *yaml.Node) {
			tp.Traits = map[string]any{}
			p.each(v, "traits", func(k, tv *yaml.Node) {
				if tv.Kind != yaml.ScalarNode {
					p.errorf(tv, "trait %s must be a string, number or bool", k.Value)
					return
				}
				switch tv.Tag {
				case "!!bool":
					tp.Traits[k.Value] = tv.Value == "true"
				case "!!int":
					i, _ := p.integer(tv, "trait "+k.Value)
					tp.Traits[k.Value] = i
				case "!!float":
					f, _ := p.number(tv, "trait "+k.Value)
					tp.Traits[k.Value] = f
				default:
					tp.Traits[k.Value] = tv.Value
				}
			})
		},
		"counts": func(v *yaml.Node) {
			tp.Counts = map[string]int64{}
			p.each(v, "counts", func(k, cv *yaml.Node) {
				if _, _, err := splitFeatureKey(k.Value, 2); err != nil {
					p.errorf(k, "counts: %v", err)
				}
				tp.Counts[k.Value], _ = p.integer(cv, "count "+k.Value)
			})
		},
		"sums": func(v *yaml.Node) {
			tp.Sums = map[string]float64{}
			p.each(v, "sums", func(k, sv *yaml.Node) {
				if _, _, err := splitFeatureKey(k.Value, 3); err != nil {
					p.errorf(k, "sums: %v", err)
				}
				tp.Sums[k.Value], _ = p.number(sv, "sum "+k.Value)
			})
		},
		"since": func(v *yaml.Node) {
			tp.Since = map[string]int64{}
			p.each(v, "since", func(k, sv *yaml.Node) { tp.Since[k.Value], _ = p.integer(sv, "since "+k.Value) })
		},
		"scores": func(v *yaml.Node) {
			tp.Scores = map[string]float64{}
			p.each(v, "scores", func(k, sv *yaml.Node) { tp.Scores[k.Value], _ = p.number(sv, "score "+k.Value) })
		},
	})
}

// splitFeatureKey splits a test profile key: "type/window" (counts) or "type/prop/window"
// (sums), and parses the window.
func splitFeatureKey(k string, parts int) ([]string, time.Duration, error) {
	s := strings.Split(k, "/")
	if len(s) != parts {
		if parts == 2 {
			return nil, 0, fmt.Errorf("key %q: write event_type/window, like add_to_cart/30m", k)
		}
		return nil, 0, fmt.Errorf("key %q: write event_type/prop/window, like purchase_completed/amount/7d", k)
	}
	w, err := ParseWindow(s[parts-1])
	return s, w, err
}

func (p *parser) testRequest(n *yaml.Node, r *TestRequest) {
	strMap := func(dst *map[string]string, what string) func(*yaml.Node) {
		return func(v *yaml.Node) {
			*dst = map[string]string{}
			p.each(v, what, func(k, sv *yaml.Node) {
				var s string
				p.str(sv, what+" "+k.Value, &s)
				(*dst)[k.Value] = s
			})
		}
	}
	p.fields(n, "a test request", map[string]func(*yaml.Node){
		"path":    func(v *yaml.Node) { p.str(v, "path", &r.Path) },
		"country": func(v *yaml.Node) { p.str(v, "country", &r.Country) },
		"device":  func(v *yaml.Node) { p.str(v, "device", &r.Device) },
		"hour": func(v *yaml.Node) {
			if h, ok := p.integer(v, "hour"); ok {
				if h < 0 || h > 23 {
					p.errorf(v, "hour %d is out of range; use 0 to 23", h)
				}
				r.Hour = int(h)
			}
		},
		"bucket": func(v *yaml.Node) {
			if b, ok := p.integer(v, "bucket"); ok {
				if b < 0 || b > 99 {
					p.errorf(v, "bucket %d is out of range; use 0 to 99", b)
				}
				r.Bucket = int(b)
			}
		},
		"query":   strMap(&r.Query, "query"),
		"headers": strMap(&r.Headers, "headers"),
		"cookies": strMap(&r.Cookies, "cookies"),
	})
}

func (p *parser) modules(n *yaml.Node) {
	p.seq(n, "modules", func(c *yaml.Node) {
		m := ModuleDef{Pos: pos(c)}
		p.fields(c, "a module", map[string]func(*yaml.Node){
			"path": func(v *yaml.Node) { p.str(v, "path", &m.Path) },
			"segments": func(v *yaml.Node) {
				p.seq(v, "segments", func(sv *yaml.Node) {
					var s string
					p.name(sv, "segment name", &s)
					m.Segments = append(m.Segments, s)
				})
			},
			"features": func(v *yaml.Node) {
				p.seq(v, "features", func(fv *yaml.Node) {
					var s string
					p.str(fv, "feature", &s)
					if _, err := ParseFeature(s); err != nil {
						p.errorf(fv, "feature %q: %v", s, err)
					}
					m.Features = append(m.Features, s)
				})
			},
		})
		if c.Kind == yaml.MappingNode {
			p.required(c, "module", "path", "segments")
		}
		p.f.Modules = append(p.f.Modules, m)
	})
}

// ParseFeature parses a feature written as a rule call (count("add_to_cart", "30m"),
// trait("plan"), request.country, request.query("utm"), ...) into the Input it reads.
func ParseFeature(s string) (Input, error) {
	f := &File{Segments: []SegmentDef{{Name: "feature", Rule: "[" + s + "] == []"}}}
	c, err := analyseOnly(f)
	if err != nil {
		return Input{}, fmt.Errorf("not a feature call: %w", err)
	}
	top := c.segs[0].ast.Expr()
	if top.Kind() != ast.CallKind || top.AsCall().FunctionName() != operators.Equals ||
		len(top.AsCall().Args()) != 2 || top.AsCall().Args()[0].Kind() != ast.ListKind {
		return Input{}, errors.New("write exactly one feature call, like count(\"add_to_cart\", \"30m\")")
	}
	el := top.AsCall().Args()[0].AsList().Elements()
	c.cur = c.segs[0]
	if len(el) != 1 || len(c.m.Inputs) != 1 || len(c.segs[0].deps) != 0 {
		return Input{}, errors.New("write exactly one feature call, like count(\"add_to_cart\", \"30m\")")
	}
	if r, ok, _ := c.vocab(el[0]); !ok || r.slot < 0 {
		return Input{}, errors.New("write exactly one feature call, like count(\"add_to_cart\", \"30m\")")
	}
	return c.m.Inputs[0], nil
}
