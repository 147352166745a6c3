// Command origin turns behaviour events into profiles and segment memberships and streams the
// changes to every edge over NATS. Run `origin -h` for its settings, `origin rules` for the rules CLI.
package main

import (
	"os"

	"github.com/segedge/segedge/origin/rulescli"
	"github.com/segedge/segedge/origin/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "rules" {
		os.Exit(rulescli.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(server.Main(os.Args[1:], os.Stderr))
}
