//go:build !unix || aix || netbsd

package systemd

import "time"

// x/sys offers no clock_gettime on AIX and no CLOCK_MONOTONIC constant on
// NetBSD; systemd runs on neither.
func monotonic() (time.Duration, error) { return 0, ErrNotSupported }
