// Command gobomb is a malicious Go guest: every evaluation allocates memory
// it never frees, until the Go runtime runs out of the memory the host
// allows and exits. Built by TestGoGuestMemoryBomb.
package main

import "github.com/segedge/segedge/wasm/guest"

var hoard [][]byte

func init() {
	guest.Register(guest.Shape{Segments: 1}, func(in *guest.Input, out *guest.Output) error {
		for {
			hoard = append(hoard, make([]byte, 1<<20))
		}
	})
}

func main() {}
