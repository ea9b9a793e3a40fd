package tableflip

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrNotSupported is returned by Upgrade on platforms that cannot hand
// sockets to a new process (every platform that is not unix, such as
// Windows). New, Listen and Ready still work there, so that the same
// program runs everywhere, only without upgrades.
var ErrNotSupported = errors.New("tableflip: platform does not support graceful restart")

// Errors returned by Upgrade, to be told apart with errors.Is.
var (
	// ErrNotReady: Upgrade was called before Ready.
	ErrNotReady = errors.New("tableflip: process is not ready yet")
	// ErrUpgradeInProgress: another upgrade is running.
	ErrUpgradeInProgress = errors.New("tableflip: an upgrade is already in progress")
	// ErrParentRunning: the generation that started this one has not
	// exited yet (one upgrade at a time, as in cloudflare/tableflip).
	ErrParentRunning = errors.New("tableflip: the previous generation has not exited yet")
	// ErrTooManyGenerations: Options.MaxGenerations generations would
	// be alive with the new one; the older ones are still draining.
	ErrTooManyGenerations = errors.New("tableflip: too many generations alive")
	// ErrStopped: Stop was called ("terminating" in cloudflare/tableflip).
	ErrStopped = errors.New("tableflip: upgrader is stopped")
	// ErrUpgraded: an upgrade already succeeded; this generation is on
	// its way out.
	ErrUpgraded = errors.New("tableflip: already upgraded")
	// ErrTimeout: the new generation did not become ready within
	// Options.UpgradeTimeout. It is wrapped in a *ChildError.
	ErrTimeout = errors.New("tableflip: new generation timed out")
	// ErrChildExited: the new generation exited before it was ready. It
	// is wrapped in a *ChildError.
	ErrChildExited = errors.New("tableflip: new generation exited before it was ready")
)

// ErrParentExited is returned by Ready in a new generation whose parent
// exited (or was killed) before it acknowledged the handover. The new
// generation is not the acknowledged successor: it did not write the PID
// file, refuses upgrades, and should exit. The sockets it inherited are
// still open, so a program may choose to serve on regardless.
var ErrParentExited = errors.New("tableflip: parent exited before it acknowledged the handover")

// ErrHandover is wrapped by errors about the handover between the
// generations itself: a protocol mismatch, malformed data, or a child that
// rejected what it was sent.
var ErrHandover = errors.New("tableflip: handover failed")

// ChildError reports a new generation that failed during an upgrade. By
// the time Upgrade returns it, the process has been stopped and reaped.
type ChildError struct {
	// PID of the new generation.
	PID int
	// ExitCode is the process's exit status, or -1 if a signal ended it
	// or the status is not known (a new generation started as a sibling,
	// see Upgrade, on a kernel before Linux 6.15 whose service manager
	// reaped it before this process could read it).
	ExitCode int
	// Signal is the signal that ended the process, or 0.
	Signal syscall.Signal
	// Err says why the upgrade failed: ErrChildExited, ErrTimeout, or an
	// error wrapping ErrHandover.
	Err error
}

// Error describes the failure.
func (e *ChildError) Error() string {
	status := fmt.Sprintf("exit status %d", e.ExitCode)
	switch {
	case e.Signal != 0:
		status = "killed by signal " + e.Signal.String()
	case e.ExitCode < 0:
		status = "exit status unknown"
	}
	return fmt.Sprintf("%v (pid %d, %s)", e.Err, e.PID, status)
}

// Unwrap returns the underlying error, for errors.Is and errors.As.
func (e *ChildError) Unwrap() error { return e.Err }
