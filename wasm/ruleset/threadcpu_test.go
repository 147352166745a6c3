//go:build linux

package ruleset

import (
	"syscall"
	"time"
)

// threadCPU is the CPU time the calling OS thread has used so far (getrusage RUSAGE_THREAD).
func threadCPU() (time.Duration, bool) {
	const rusageThread = 1
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
