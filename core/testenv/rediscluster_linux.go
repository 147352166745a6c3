package testenv

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal makes the kernel kill cmd's process when the test binary dies (killed
// by a timeout or by hand), which runs no cleanup: otherwise its redis-servers would outlive it.
// The kernel sends the signal when the thread that started the process ends; Go keeps its
// threads until the process ends, unless a goroutine locked to one (runtime.LockOSThread)
// returns, which no caller of testenv does.
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
