//go:build wasip1

package guest

import "unsafe"

// The ABI exports. The buffers are package-level arrays: their addresses in
// linear memory never change, as the ABI requires.

//go:wasmexport segedge_abi_version
func exportABIVersion() int32 { return ABIVersion }

//go:wasmexport segedge_input_ptr
func exportInputPtr() int32 { return int32(uintptr(unsafe.Pointer(&inBuf[0]))) }

//go:wasmexport segedge_input_cap
func exportInputCap() int32 { return InputCap }

//go:wasmexport segedge_output_ptr
func exportOutputPtr() int32 { return int32(uintptr(unsafe.Pointer(&outBuf[0]))) }

//go:wasmexport segedge_eval
func exportEval(n int32) int32 {
	if n < 0 || n > InputCap {
		return StatusBadInput
	}
	return evaluate(registered, shape, inBuf[:n], outBuf[:])
}
