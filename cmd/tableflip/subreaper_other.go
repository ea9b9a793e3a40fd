//go:build !linux

package main

// becomeSubreaper reports false: only Linux has child subreapers, so
// elsewhere old generations re-parent to init and are watched by polling.
func becomeSubreaper() bool { return false }
