// Command edge is the personalizing reverse proxy that sits in front of a website: it serves
// cached pages with each slot rewritten for the visitor. Run `edge -h` for its settings.
package main

import (
	"os"

	"github.com/segedge/segedge/edge/server"
)

func main() { os.Exit(server.Main(os.Args[1:], os.Stderr)) }
