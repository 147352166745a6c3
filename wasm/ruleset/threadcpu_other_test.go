//go:build !linux

package ruleset

import "time"

// threadCPU: per-thread CPU time is only read on Linux.
func threadCPU() (time.Duration, bool) { return 0, false }
