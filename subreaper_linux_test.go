//go:build linux

package tableflip

import "golang.org/x/sys/unix"

// becomeSubreaper makes orphaned generations children of the test
// process, so that it can wait for them and see that none is left.
func becomeSubreaper() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }
