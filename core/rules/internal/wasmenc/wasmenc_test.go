package wasmenc

import (
	"bytes"
	"testing"
)

func TestLEB128(t *testing.T) {
	for _, tc := range []struct {
		v    int64
		want []byte
	}{
		{0, []byte{0x00}}, {63, []byte{0x3f}}, {64, []byte{0xc0, 0x00}}, {-1, []byte{0x7f}},
		{-64, []byte{0x40}}, {-65, []byte{0xbf, 0x7f}}, {624485, []byte{0xe5, 0x8e, 0x26}},
		{-123456, []byte{0xc0, 0xbb, 0x78}},
		{-1 << 63, []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f}},
	} {
		if got := appendS64(nil, tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("s64 %d: % x, want % x", tc.v, got, tc.want)
		}
	}
	for _, tc := range []struct {
		v    uint32
		want []byte
	}{{0, []byte{0}}, {127, []byte{0x7f}}, {128, []byte{0x80, 0x01}}, {1<<32 - 1, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}}} {
		if got := appendU32(nil, tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("u32 %d: % x, want % x", tc.v, got, tc.want)
		}
	}
}

func TestBlockTypes(t *testing.T) {
	// A block type is one signed LEB128 byte: 0x40 empty, 0x7f i32, 0x7e i64, 0x7c f64.
	for bt, want := range map[int64]byte{BlockEmpty: 0x40, BlockVal(I32): 0x7f, BlockVal(I64): 0x7e, BlockVal(F64): 0x7c} {
		var c Code
		c.Block(bt)
		if len(c.B) != 2 || c.B[1] != want {
			t.Errorf("block type %d encodes as % x, want 02 %02x", bt, c.B, want)
		}
	}
}

// The smallest module with a function that returns 42, byte for byte.
func TestEncodeMinimalModule(t *testing.T) {
	var m Module
	f := m.Reserve(m.Type(nil, []ValType{I32}))
	var c Code
	c.I32(42)
	m.SetFunc(f, nil, c.B)
	m.ExportFunc("f", f)
	want := []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		1, 5, 1, 0x60, 0, 1, 0x7f, // types
		3, 2, 1, 0, // functions
		7, 5, 1, 1, 'f', 0, 0, // exports
		10, 6, 1, 4, 0, 0x41, 42, 0x0b, // code
	}
	if got := m.Encode(); !bytes.Equal(got, want) {
		t.Errorf("got  % x\nwant % x", got, want)
	}
}
