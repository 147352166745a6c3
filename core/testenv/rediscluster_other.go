//go:build !linux

package testenv

import "os/exec"

// setParentDeathSignal does nothing: only Linux kills a child when its parent dies
// (rediscluster_linux.go); elsewhere a killed test binary leaves its redis-servers running.
func setParentDeathSignal(*exec.Cmd) {}
