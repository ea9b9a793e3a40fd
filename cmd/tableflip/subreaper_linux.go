//go:build linux

package main

import "golang.org/x/sys/unix"

// becomeSubreaper makes orphaned descendants re-parent to this process, so
// that old generations can be waited for, counted and reaped.
func becomeSubreaper() bool {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == nil
}
