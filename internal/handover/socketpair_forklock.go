//go:build darwin || ios || aix

package handover

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketpair holds the fork lock so that no process started meanwhile
// inherits the pair before it is close-on-exec: these systems have no
// SOCK_CLOEXEC.
func socketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	return fds, err
}
