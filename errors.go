package tableflip

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/seed589fcc9d/tableflip/internal/proc"
)

// The errors of the package, in one place: the sentinels, ChildError, and
// the Reason codes that name them on the control socket and in Stats.

// ErrNotSupported is returned by Upgrade on platforms that cannot hand
// sockets to a new process (every platform that is not unix, such as
// Windows). New, Listen and Ready still work there, so that the same
// program runs everywhere, only without upgrades.
var ErrNotSupported = errors.New("tableflip: platform does not support graceful restart")

// Errors returned by Upgrade, to be told apart with errors.Is. A refusal
// wraps its sentinel in an error that says what to do about it.
var (
	// ErrNotReady: Upgrade was called before Ready.
	ErrNotReady = errors.New("tableflip: process is not ready yet")
	// ErrUpgradeInProgress: another upgrade is running.
	ErrUpgradeInProgress = errors.New("tableflip: an upgrade is already in progress")
	// ErrParentRunning: the generation that started this one has not
	// exited yet (one upgrade at a time, as in cloudflare/tableflip;
	// Options.MaxGenerations allows more).
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
// generation is not the acknowledged successor: the PID file does not name
// it, and it should exit. Its inherited sockets are still open and its
// listeners accept (nobody else is left to), so a program may choose to
// serve on regardless.
var ErrParentExited = errors.New("tableflip: parent exited before it acknowledged the handover")

// ErrHandover is wrapped by errors about the handover between the
// generations itself: a protocol mismatch, malformed data, or a side that
// refused the other (a new generation stopped before it was ready, a
// parent that cannot write the PID file).
var ErrHandover = errors.New("tableflip: handover failed")

// errPIDFile is wrapped by the errors of writing a PID file.
var errPIDFile = errors.New("tableflip: can't write PID file")

// errStateWriter wraps the error of Options.WriteState.
var errStateWriter = errors.New("writing state")

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
	status := proc.Status{Known: e.ExitCode >= 0 || e.Signal != 0, ExitCode: e.ExitCode, Signal: e.Signal}
	return fmt.Sprintf("%v (pid %d, %s)", e.Err, e.PID, status)
}

// Unwrap returns the underlying error, for errors.Is and errors.As.
func (e *ChildError) Unwrap() error { return e.Err }

// Reasons in a ControlError.
const (
	// The upgrade was refused without starting anything.
	ReasonNotReady      = "not_ready"            // ErrNotReady
	ReasonInProgress    = "in_progress"          // ErrUpgradeInProgress
	ReasonParentRunning = "parent_running"       // ErrParentRunning
	ReasonTooMany       = "too_many_generations" // ErrTooManyGenerations
	ReasonStopped       = "stopped"              // ErrStopped
	ReasonUpgraded      = "upgraded"             // ErrUpgraded
	ReasonNotSupported  = "not_supported"        // ErrNotSupported, or no peer credentials
	// The new generation failed; PID, ExitCode and Signal say how it
	// ended.
	ReasonTimeout     = "timeout"      // ErrTimeout; also a request not sent in time
	ReasonChildExited = "child_exited" // ErrChildExited
	ReasonHandover    = "handover"     // ErrHandover
	// Any other failure, such as an executable that is gone.
	ReasonFailed = "failed"
	// The request was not served.
	ReasonBadRequest = "bad_request" // malformed, too long, unknown version or command
	ReasonPermission = "permission"  // the peer's uid may not use the socket
)

// ControlError is an error answer on the control socket, and the
// description of a failed upgrade in Stats.
type ControlError struct {
	// Reason is one of the Reason* constants.
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// PID, ExitCode and Signal describe the new generation of a failed
	// upgrade, as in ChildError: ExitCode is -1 if a signal ended it,
	// and Signal is a name such as "SIGKILL".
	PID      int    `json:"pid,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
}

// Error describes the failure.
func (e *ControlError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Reason
	}
	return msg
}

// reasons map the sentinels to their Reason, in the order they are
// tried: an upgrade cut short by Stop is a *ChildError wrapping ErrStopped
// and so says stopped only if nothing more precise matched.
var reasons = []struct {
	err    error
	reason string
}{
	{ErrNotSupported, ReasonNotSupported},
	{ErrNotReady, ReasonNotReady},
	{ErrUpgradeInProgress, ReasonInProgress},
	{ErrParentRunning, ReasonParentRunning},
	{ErrTooManyGenerations, ReasonTooMany},
	{ErrUpgraded, ReasonUpgraded},
	{ErrTimeout, ReasonTimeout},
	{ErrChildExited, ReasonChildExited},
	{ErrHandover, ReasonHandover},
	{ErrStopped, ReasonStopped},
}

// controlError describes an error from Upgrade for the control protocol
// and Stats.
func controlError(err error) *ControlError {
	e := &ControlError{Reason: ReasonFailed, Message: err.Error()}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			e.Reason = r.reason
			break
		}
	}
	var ce *ChildError
	if errors.As(err, &ce) {
		e.PID = ce.PID
		code := ce.ExitCode
		e.ExitCode = &code
		if ce.Signal != 0 {
			e.Signal = proc.SignalName(ce.Signal)
		}
	}
	return e
}
