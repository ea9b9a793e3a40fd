package systemd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// EnvNotifySocket names the variable through which systemd tells a service
// where its notification socket is: an absolute path, or "@name" for a
// Linux abstract socket.
const EnvNotifySocket = "NOTIFY_SOCKET"

// Messages without a value. Pass them, and the strings the helper functions
// below return, to [Notifier.Notify].
const (
	// Ready tells systemd that start-up or a reload has finished.
	Ready = "READY=1"
	// Reloading tells systemd that a reload has begun. Type=notify-reload
	// services must send it together with [MonotonicUsec]; see
	// [Notifier.Reloading].
	Reloading = "RELOADING=1"
	// Stopping tells systemd that the service is shutting down.
	Stopping = "STOPPING=1"
	// FdStore asks systemd to keep the fds sent with the message in the
	// unit's fd store (FileDescriptorStoreMax= must be above zero).
	FdStore = "FDSTORE=1"
	// FdStoreRemove asks systemd to close the stored fds named by [FdName].
	FdStoreRemove = "FDSTOREREMOVE=1"
	// Watchdog resets the service's watchdog timer (WatchdogSec=).
	Watchdog = "WATCHDOG=1"
	// Barrier asks systemd to close the one fd sent with the message once
	// it has processed every message before it; see [Notifier.Barrier].
	Barrier = "BARRIER=1"
)

// Protocol limits, from systemd's sources.
const (
	// MaxMessageSize is the largest datagram systemd reads from its
	// notification socket (NOTIFY_BUFFER_MAX, PIPE_BUF); it ignores
	// longer ones, so Notify refuses them.
	MaxMessageSize = 4096
	// MaxNotifyFds is the largest number of fds one message can carry:
	// Linux refuses more than SCM_MAX_FD (253) in one SCM_RIGHTS message.
	MaxNotifyFds = 253
	// MaxFdNameLen is the longest name systemd accepts for a stored or
	// passed fd (FDNAME_MAX).
	MaxFdNameLen = 255
)

var (
	// ErrNoSocket is returned by [NewNotifier] when NOTIFY_SOCKET is not
	// set, that is when the process does not run under systemd (or runs
	// under it with Type= other than notify and notify-reload), and by
	// the methods of a nil *Notifier. It is not a failure: programs ignore
	// it.
	ErrNoSocket = errors.New("systemd: NOTIFY_SOCKET is not set")

	// ErrNotSupported is returned on platforms without Unix domain
	// datagram sockets and fd passing (all but the "unix" build
	// constraint), and for abstract sockets outside Linux.
	ErrNotSupported = errors.New("systemd: not supported on this platform")

	// ErrInvalidState is wrapped by the errors that Notify returns for a
	// message that would break the protocol or that systemd would ignore.
	ErrInvalidState = errors.New("systemd: invalid notify message")
)

// NotifyError records a failure to send a message to the notification
// socket. Callers usually log it as a warning and keep serving: systemd
// not hearing from a service is no reason to stop it. A socket that does
// not exist gives an Err for which errors.Is(err, fs.ErrNotExist) holds;
// one that exists but on which nobody listens gives ECONNREFUSED.
type NotifyError struct {
	Socket string // the address, as in NOTIFY_SOCKET
	Err    error
}

// Error describes the failure.
func (e *NotifyError) Error() string {
	return "systemd: notify socket " + e.Socket + ": " + e.Err.Error()
}

// Unwrap returns the underlying error, for errors.Is and errors.As.
func (e *NotifyError) Unwrap() error { return e.Err }

// A Notifier sends sd_notify(3) messages to systemd's notification socket.
// It holds no fd between messages: each message goes out on a fresh
// close-on-exec datagram socket, so a Notifier costs nothing while idle
// and leaks nothing into subprocesses. It is safe for concurrent use.
//
// # NOTIFY_SOCKET stays in the environment
//
// Unlike sd_notify's unset_environment, this package never removes
// NOTIFY_SOCKET. Every generation of an upgraded program becomes the
// unit's main process in its turn, and must then tell systemd about the
// next upgrade (RELOADING=1) and about its own stop (STOPPING=1), so it
// must inherit the variable. Other subprocesses inherit it too; with
// NotifyAccess=main (the scheme this package is built for, see
// [Notifier.MainPIDReady]) systemd ignores whatever they send.
type Notifier struct {
	socket string
}

// NewNotifier returns a Notifier for the socket named by NOTIFY_SOCKET.
// When the variable is unset or empty it returns (nil, [ErrNoSocket]),
// having done nothing else: this is the whole cost for programs that do
// not run under systemd.
//
// NewNotifier checks only the form of the address; a socket that does not
// exist is reported by the first message sent (a [*NotifyError]).
func NewNotifier() (*Notifier, error) {
	socket := os.Getenv(EnvNotifySocket)
	if socket == "" {
		return nil, ErrNoSocket
	}
	return NotifierFor(socket)
}

// NotifierFor returns a Notifier for the given socket address, written as
// in NOTIFY_SOCKET: an absolute path, or "@name" for an abstract socket
// (Linux only). Other forms, including relative paths and systemd's
// "vsock:" addresses, are refused.
func NotifierFor(socket string) (*Notifier, error) {
	if err := checkSocketAddr(socket); err != nil {
		return nil, err
	}
	return &Notifier{socket: socket}, nil
}

// Socket returns the address the Notifier sends to.
func (n *Notifier) Socket() string {
	if n == nil {
		return ""
	}
	return n.socket
}

// Notify sends one message made of the given assignments ("KEY=value"),
// joined by newlines, as sd_notify does. It validates them first (see
// [ErrInvalidState]). A nil Notifier returns [ErrNoSocket].
func (n *Notifier) Notify(states ...string) error {
	return n.NotifyWithFds(nil, states...)
}

// NotifyWithFiles sends a message with the files' descriptors attached
// (SCM_RIGHTS). systemd keeps them only if the message carries [FdStore];
// Notify refuses fds without it. The caller keeps ownership of files:
// systemd receives duplicates, and closing a file afterwards does not
// affect them.
func (n *Notifier) NotifyWithFiles(files []*os.File, states ...string) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	err := n.NotifyWithFds(fds, states...)
	for _, f := range files {
		// The descriptors are valid only while their Files are reachable.
		runtime.KeepAlive(f)
	}
	return err
}

// NotifyWithFds is NotifyWithFiles for raw descriptors, which stay the
// caller's.
func (n *Notifier) NotifyWithFds(fds []int, states ...string) error {
	if n == nil {
		return ErrNoSocket
	}
	msg, err := buildMessage(states, len(fds))
	if err != nil {
		return err
	}
	if err := send(n.socket, msg, fds); err != nil {
		return &NotifyError{Socket: n.socket, Err: err}
	}
	return nil
}

// Ready sends READY=1, with STATUS=status unless status is empty.
func (n *Notifier) Ready(status string) error {
	return n.Notify(withStatus(status, Ready)...)
}

// Reloading sends RELOADING=1 with MONOTONIC_USEC= set to the current
// CLOCK_MONOTONIC time, as Type=notify-reload requires (systemd 253+),
// with STATUS=status unless status is empty. Send [Notifier.Ready] or
// [Notifier.MainPIDReady] when the reload (upgrade) has finished, whether
// it worked or not.
func (n *Notifier) Reloading(status string) error {
	if n == nil {
		return ErrNoSocket
	}
	now, err := Monotonic()
	if err != nil {
		return err
	}
	return n.Notify(withStatus(status, Reloading, MonotonicUsec(now))...)
}

// Stopping sends STOPPING=1, with STATUS=status unless status is empty.
// Only the generation that is the unit's main process may send it: an old
// generation that hands over to a new one must not.
func (n *Notifier) Stopping(status string) error {
	return n.Notify(withStatus(status, Stopping)...)
}

// Status sends STATUS=status: one line for `systemctl status`.
func (n *Notifier) Status(status string) error {
	return n.Notify(Status(status))
}

// ExtendTimeout sends EXTEND_TIMEOUT_USEC=: the current start, reload or
// stop may take d longer, counted from now (systemd 236+).
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	return n.Notify(ExtendTimeout(d))
}

// MainPIDReady hands the unit over to the process pid in one message:
// MAINPID=pid, READY=1, and STATUS=status unless status is empty.
//
// This is the upgrade scheme the package supports: the old generation,
// which is the main process systemd knows, sends it once the new
// generation is ready. systemd checks the sender against the old main PID
// before it applies MAINPID=, so NotifyAccess=main is enough, and no other
// process of the unit can ever move the main PID. (The rejected
// alternative, the new generation announcing itself, needs
// NotifyAccess=all, which lets any subprocess, however buggy, tell systemd
// that the service is ready or stopping.)
func (n *Notifier) MainPIDReady(pid int, status string) error {
	return n.Notify(withStatus(status, MainPID(pid), Ready)...)
}

// Barrier waits until systemd has processed every message sent before it
// (sd_notify_barrier, systemd 246+), for at most timeout: it sends
// BARRIER=1 with the write end of a pipe, which systemd closes once it has
// handled what came before. A process whose last messages must take
// effect before it exits (an old generation's MAINPID=, which must move
// the main PID before systemd sees the old one exit) calls it before it
// goes. It returns an error wrapping os.ErrDeadlineExceeded if systemd did
// not answer in time.
func (n *Notifier) Barrier(timeout time.Duration) error {
	if n == nil {
		return ErrNoSocket
	}
	return barrier(n, timeout)
}

// StoreFiles sends FDSTORE=1 with FDNAME=name and the files' descriptors:
// systemd keeps duplicates in the unit's fd store and passes them back,
// with this name in LISTEN_FDNAMES, to the next start of the service
// ([ListenFds]). The caller keeps ownership of files.
func (n *Notifier) StoreFiles(name string, files ...*os.File) error {
	return n.NotifyWithFiles(files, FdStore, FdName(name))
}

// RemoveFiles sends FDSTOREREMOVE=1 with FDNAME=name: systemd closes the
// stored fds of that name.
func (n *Notifier) RemoveFiles(name string) error {
	return n.Notify(FdStoreRemove, FdName(name))
}

// Status returns "STATUS=" + text.
func Status(text string) string { return "STATUS=" + text }

// MainPID returns "MAINPID=" and pid in decimal.
func MainPID(pid int) string { return "MAINPID=" + strconv.Itoa(pid) }

// FdName returns "FDNAME=" + name.
func FdName(name string) string { return "FDNAME=" + name }

// ExtendTimeout returns "EXTEND_TIMEOUT_USEC=" and d in microseconds,
// rounded up so that a positive d never becomes zero.
func ExtendTimeout(d time.Duration) string {
	return "EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(usec(d), 10)
}

// MonotonicUsec returns "MONOTONIC_USEC=" and t in microseconds; t is a
// CLOCK_MONOTONIC reading such as [Monotonic] returns.
func MonotonicUsec(t time.Duration) string {
	return "MONOTONIC_USEC=" + strconv.FormatInt(usec(t), 10)
}

// Monotonic reads CLOCK_MONOTONIC, the clock systemd compares
// MONOTONIC_USEC= with. Go's time package offers no absolute reading of
// it. It returns [ErrNotSupported] outside the "unix" build constraint.
func Monotonic() (time.Duration, error) { return monotonic() }

func usec(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Microsecond - 1) / time.Microsecond)
}

func withStatus(status string, states ...string) []string {
	if status != "" {
		states = append(states, Status(status))
	}
	return states
}

// buildMessage validates states and joins them as sd_notify does.
// systemd splits a datagram on newlines and reads each line as KEY=VALUE,
// drops datagrams with a NUL byte or longer than MaxMessageSize, and
// closes fds sent without FDSTORE=1.
func buildMessage(states []string, nfds int) ([]byte, error) {
	if len(states) == 0 {
		return nil, fmt.Errorf("%w: no state", ErrInvalidState)
	}
	store := false
	size := len(states) - 1
	for _, s := range states {
		if err := checkState(s); err != nil {
			return nil, err
		}
		if s == FdStore || s == Barrier {
			store = true
		}
		size += len(s)
	}
	if size > MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes, more than systemd reads (%d)", ErrInvalidState, size, MaxMessageSize)
	}
	if nfds > 0 && !store {
		return nil, fmt.Errorf("%w: %d fds without %s or %s: systemd would close them", ErrInvalidState, nfds, FdStore, Barrier)
	}
	if nfds > MaxNotifyFds {
		return nil, fmt.Errorf("%w: %d fds, more than one message can carry (%d)", ErrInvalidState, nfds, MaxNotifyFds)
	}
	return []byte(strings.Join(states, "\n")), nil
}

func checkState(s string) error {
	key, value, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%w: %q is not KEY=value", ErrInvalidState, truncate(s))
	}
	if key == "" {
		return fmt.Errorf("%w: %q has an empty key", ErrInvalidState, truncate(s))
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("%w: key %q: only A-Z, 0-9 and _ are allowed", ErrInvalidState, truncate(key))
		}
	}
	if i := strings.IndexAny(value, "\n\x00"); i >= 0 {
		return fmt.Errorf("%w: %s value %q: newline or NUL byte would break the message", ErrInvalidState, key, truncate(value))
	}
	switch key {
	case "FDNAME":
		if err := checkFdName(value); err != nil {
			return fmt.Errorf("%w: FDNAME: %v", ErrInvalidState, err)
		}
	case "MAINPID":
		if pid, err := strconv.Atoi(value); err != nil || pid <= 0 || !isDigits(value) {
			return fmt.Errorf("%w: MAINPID %q is not a process ID", ErrInvalidState, truncate(value))
		}
	case "MONOTONIC_USEC", "EXTEND_TIMEOUT_USEC", "WATCHDOG_USEC":
		if !isDigits(value) {
			return fmt.Errorf("%w: %s %q is not a number of microseconds", ErrInvalidState, key, truncate(value))
		}
	}
	return nil
}

// checkFdName applies systemd's fdname_is_valid: printable ASCII other
// than ':' (the separator in LISTEN_FDNAMES), at most MaxFdNameLen bytes.
// The empty name is valid.
func checkFdName(name string) error {
	if len(name) > MaxFdNameLen {
		return fmt.Errorf("name of %d bytes, longer than systemd allows (%d)", len(name), MaxFdNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < ' ' || c >= 127 || c == ':' {
			return fmt.Errorf("name %q: byte %#02x at %d is not allowed (printable ASCII other than ':')", truncate(name), c, i)
		}
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// truncate keeps error messages readable when the input is huge.
func truncate(s string) string {
	const maxLen = 64
	if len(s) <= maxLen {
		return s
	}
	return s[:maxLen] + "..."
}
