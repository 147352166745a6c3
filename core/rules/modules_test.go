package rules

import (
	"strings"
	"testing"
	"time"
)

const modulesBase = `segments:
  - name: shopper
    rule: request.path.startsWith("/shop")
modules:
  - path: mods/promo.wasm
    segments: [deep, promo]
    features: ['request.path', 'count("add_to_cart", "30m")', 'request.query("promo")']
slots:
  - name: hero
    variants:
      - when: promo
        html: p
      - when: shopper
        html: s
`

func TestModulesLinked(t *testing.T) {
	f, err := Parse("rules.yaml", []byte(modulesBase))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	m := &rs.Manifest
	if m.GeneratedSegments != 1 || len(m.Segments) != 3 || m.Segments[1].Module != "mods/promo.wasm" || !m.Segments[2].NeedsRequest {
		t.Fatalf("segments %+v generated %d", m.Segments, m.GeneratedSegments)
	}
	// request.path is shared with the CEL rule (input 0); the module's other two follow.
	if m.GeneratedInputs != 1 || len(m.Inputs) != 3 || len(m.Modules) != 1 {
		t.Fatalf("inputs %+v generated %d modules %+v", m.Inputs, m.GeneratedInputs, m.Modules)
	}
	if got := m.Modules[0]; len(got.Inputs) != 3 || got.Inputs[0] != 0 || got.Segments[0] != 1 || got.Segments[1] != 2 {
		t.Fatalf("module %+v", got)
	}
	if m.Slots[0].Variants[0].Segment != 2 {
		t.Fatalf("slot variant on a module segment: %+v", m.Slots[0])
	}
	if err := rs.AttachModules("rules.yaml", map[string][]byte{"mods/promo.wasm": []byte("\x00asm")}); err != nil {
		t.Fatal(err)
	}
	if rs.Manifest.Modules[0].Hash != HashModule([]byte("\x00asm")) || rs.Manifest.Modules[0].Size != 4 {
		t.Fatalf("attached %+v", rs.Manifest.Modules[0])
	}
	// The module's input: 3 slots, strings as bytes (never interned).
	req := testRequest{&TestRequest{Path: "/a/b", Query: map[string]string{"promo": "42"}}}
	in := m.EncodeModuleInput(nil, 0, TestFeatures{}, req, time.Unix(0, 0))
	if len(in) != 16+3*16+len("/a/b")+len("42") || in[16] != kindString || in[32] != kindInt || in[48] != kindString {
		t.Fatalf("module input % x", in)
	}
	// The generated module's output covers the CEL segment only; the module's bits merge in.
	res := m.NewResult()
	m.DecodeOutput(make([]byte, m.GeneratedOutputLen()), res, false)
	if !res.IsError(1) || !res.IsError(2) || res.Variants[0] != -1 {
		t.Fatalf("before the module answers: %+v", res)
	}
	out := make([]byte, m.ModuleOutputLen(0))
	out[0] = 0b10 // promo
	m.MergeModuleOutput(0, out, res, false)
	if res.IsError(2) || !res.IsMember(2) || res.IsMember(1) || res.Variants[0] != 0 {
		t.Fatalf("after the module answers: %+v", res)
	}
}

func TestModuleErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"segment() of a module segment", modulesBase + "  - name: x\n    variants: [{when: shopper, html: a}]\n",
			""},
		{"cel reads module segment", strings.Replace(modulesBase, `rule: request.path.startsWith("/shop")`, `rule: segment("promo")`, 1),
			`rules.yaml:3:11: rule shopper 1:8: segment "promo" is computed by a hand-written module, which runs after the CEL rules, so a rule cannot read it with segment()`},
		{"module redefines cel segment", strings.Replace(modulesBase, "[deep, promo]", "[deep, shopper]", 1),
			`rules.yaml:5:5: segment "shopper" is defined under segments and computed by module "mods/promo.wasm"; keep one`},
		{"two modules one segment", modulesBase + "modules2", ""},
		{"not wasm", strings.Replace(modulesBase, "mods/promo.wasm", "mods/promo.so", 1), `module path "mods/promo.so" must name a .wasm file`},
		{"unknown score", strings.Replace(modulesBase, `'request.path'`, `'score("nope")'`, 1), `unknown score "nope"`},
		{"trigger on module segment", modulesBase + "triggers:\n  - name: t\n    on: enter(\"promo\")\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.src
			if strings.HasSuffix(src, "modules2") {
				src = strings.Replace(strings.TrimSuffix(src, "modules2"), "modules:\n", "modules:\n  - path: other.wasm\n    segments: [deep]\n", 1)
				tt.want = `segment "deep" is computed by modules "other.wasm" and "mods/promo.wasm"; keep one`
			}
			f, err := Parse("rules.yaml", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Compile(f)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v\nwant %q", err, tt.want)
			}
		})
	}
}

func TestAttachModulesMissingAndExtra(t *testing.T) {
	f, _ := Parse("rules.yaml", []byte(modulesBase))
	rs, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	err = rs.AttachModules("rules.yaml", map[string][]byte{"promo.wasm": {0}})
	for _, want := range []string{`rules.yaml:5:5: module "mods/promo.wasm" was not uploaded`, `module "promo.wasm" was uploaded but the rules file's modules section does not list it`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v\nwant %q", err, want)
		}
	}
}
