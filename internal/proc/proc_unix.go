//go:build unix

package proc

import "golang.org/x/sys/unix"

// killAlive reports whether pid exists. A zombie counts as alive: kill
// cannot tell, and only a pidfd can.
func killAlive(pid int) func() bool {
	return func() bool {
		err := unix.Kill(pid, 0)
		return err == nil || err == unix.EPERM
	}
}
