// Command origin turns behaviour events into profiles and segment memberships and streams the
// changes to every edge over NATS. Run `origin -h` for its settings.
package main

import (
	"os"

	"github.com/segedge/segedge/origin/server"
)

func main() { os.Exit(server.Main(os.Args[1:], os.Stderr)) }
