//go:build linux

package tableflip

import (
	"errors"

	"golang.org/x/sys/unix"
)

// watchProcess returns how to tell whether pid is still alive, and ok
// false if it is gone already. A pidfd is opened now, so that a pid reused
// later is never mistaken for the generation; it becomes readable when the
// process exits, zombie or not. Kernels before 5.3 fall back to kill(0).
func watchProcess(pid int) (alive func() bool, release func(), ok bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil, nil, false
	case err != nil:
		return killAlive(pid), nil, killAlive(pid)()
	}
	alive = func() bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err == nil && n == 0
		}
	}
	return alive, func() { unix.Close(fd) }, true
}
