package wasm

import (
	"errors"
	"fmt"
)

// importKind names the kinds of a WebAssembly import descriptor.
var importKind = [...]string{0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

// wasmImport is one entry of a module's import section.
type wasmImport struct {
	Module, Name string
	Kind         byte // 0 func, 1 table, 2 memory, 3 global, 4 tag
}

func (i wasmImport) String() string {
	k := "unknown"
	if int(i.Kind) < len(importKind) {
		k = importKind[i.Kind]
	}
	return fmt.Sprintf("%s %q", k, i.Module+"."+i.Name)
}

// binaryInfo is what the loader reads from a binary before handing it to
// wazero: every import (of any kind, which wazero's CompiledModule does not
// list for tables and globals) and whether it has a start function.
type binaryInfo struct {
	Imports  []wasmImport
	HasStart bool
}

var errTruncated = errors.New("truncated")

// scanBinary walks the section headers of a WebAssembly binary and decodes its
// import section. It never trusts a length: every read is bounds-checked, so
// arbitrary bytes give an error, never a panic or a huge allocation. Full
// validation is wazero's job; this only needs to be right about imports.
func scanBinary(bin []byte) (binaryInfo, error) {
	var info binaryInfo
	if len(bin) < 8 || string(bin[:4]) != "\x00asm" {
		return info, errors.New("not a WebAssembly binary (bad magic)")
	}
	if bin[4] != 1 || bin[5] != 0 || bin[6] != 0 || bin[7] != 0 {
		return info, fmt.Errorf("unsupported WebAssembly version % x", bin[4:8])
	}
	r := reader{b: bin, off: 8}
	for r.off < len(r.b) {
		id, err := r.byte()
		if err != nil {
			return info, err
		}
		size, err := r.u32()
		if err != nil {
			return info, fmt.Errorf("section %d size: %w", id, err)
		}
		if uint64(size) > uint64(len(r.b)-r.off) {
			return info, fmt.Errorf("section %d at offset %d: size %d past end of binary", id, r.off, size)
		}
		body := reader{b: r.b[:r.off+int(size)], off: r.off}
		switch id {
		case 2:
			if info.Imports, err = body.imports(); err != nil {
				return info, fmt.Errorf("import section: %w", err)
			}
		case 8:
			info.HasStart = true
		}
		r.off += int(size)
	}
	return info, nil
}

type reader struct {
	b   []byte
	off int
}

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errTruncated
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

// u32 reads an unsigned LEB128 of at most 5 bytes.
func (r *reader) u32() (uint32, error) {
	var v uint32
	for shift := uint(0); shift < 35; shift += 7 {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if shift == 28 && c > 0x0f {
			return 0, errors.New("LEB128 overflows u32")
		}
		v |= uint32(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, errors.New("LEB128 too long")
}

func (r *reader) name() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	if uint64(n) > uint64(len(r.b)-r.off) {
		return "", errTruncated
	}
	s := string(r.b[r.off : r.off+int(n)])
	r.off += int(n)
	return s, nil
}

func (r *reader) limits() error {
	flags, err := r.byte()
	if err != nil {
		return err
	}
	if _, err := r.u32(); err != nil { // min (u64 for memory64 is still ≤10 bytes; u32 suffices to reject)
		return err
	}
	if flags&1 != 0 {
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	return nil
}

func (r *reader) imports() ([]wasmImport, error) {
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	// Each import takes at least 4 bytes: never allocate more than the
	// section could hold.
	if uint64(n) > uint64(len(r.b)-r.off)/4 {
		return nil, fmt.Errorf("%d imports cannot fit in the section", n)
	}
	out := make([]wasmImport, 0, n)
	for i := uint32(0); i < n; i++ {
		var im wasmImport
		if im.Module, err = r.name(); err != nil {
			return nil, fmt.Errorf("import %d module name: %w", i, err)
		}
		if im.Name, err = r.name(); err != nil {
			return nil, fmt.Errorf("import %d name: %w", i, err)
		}
		if im.Kind, err = r.byte(); err != nil {
			return nil, fmt.Errorf("import %d kind: %w", i, err)
		}
		switch im.Kind {
		case 0: // func: type index
			_, err = r.u32()
		case 1: // table: reftype, limits
			if _, err = r.byte(); err == nil {
				err = r.limits()
			}
		case 2: // memory: limits
			err = r.limits()
		case 3: // global: valtype, mutability
			if _, err = r.byte(); err == nil {
				_, err = r.byte()
			}
		case 4: // tag: attribute, type index
			if _, err = r.byte(); err == nil {
				_, err = r.u32()
			}
		default:
			return nil, fmt.Errorf("import %d (%q): unknown kind 0x%02x", i, im.Module+"."+im.Name, im.Kind)
		}
		if err != nil {
			return nil, fmt.Errorf("import %d (%q): %w", i, im.Module+"."+im.Name, err)
		}
		out = append(out, im)
	}
	return out, nil
}
