//go:build unix && !aix && !netbsd

package systemd

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

func monotonic() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("systemd: reading CLOCK_MONOTONIC: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}
