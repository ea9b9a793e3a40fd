//go:build unix

package proc

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// killAlive reports whether pid exists. A zombie counts as alive: kill
// cannot tell, and only a pidfd can.
func killAlive(pid int) func() bool {
	return func() bool {
		err := unix.Kill(pid, 0)
		return err == nil || err == unix.EPERM
	}
}

// SignalName names sig as "SIGKILL".
func SignalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return sig.String()
}

// Open reports whether fd is an open descriptor of this process.
func Open(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}
