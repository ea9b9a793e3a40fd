package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Socket activation: the variables systemd sets for a service it passes
// fds to, and where the fds start (SD_LISTEN_FDS_START).
const (
	EnvListenPID     = "LISTEN_PID"
	EnvListenFds     = "LISTEN_FDS"
	EnvListenFdNames = "LISTEN_FDNAMES"

	// ListenFdsStart is the first passed fd; the others follow without
	// gaps.
	ListenFdsStart = 3

	// UnknownFdName is the name of a passed fd when LISTEN_FDNAMES is
	// absent, as sd_listen_fds_with_names(3) reports it.
	UnknownFdName = "unknown"

	// MaxListenFds bounds LISTEN_FDS. systemd allows at most a few
	// thousand (FileDescriptorStoreMax= and sockets of one unit); the
	// bound turns a corrupt value into an error instead of an attempt to
	// inspect millions of fds.
	MaxListenFds = 1 << 16
)

// EnvError reports a socket-activation variable that could not be used.
// Var and Value say which variable and what it held (truncated when
// long); Err says what was wrong with it.
type EnvError struct {
	Var   string
	Value string
	Err   error
}

// Error describes the failure.
func (e *EnvError) Error() string {
	return fmt.Sprintf("systemd: %s=%q: %v", e.Var, truncate(e.Value), e.Err)
}

// Unwrap returns the underlying error, for errors.Is and errors.As.
func (e *EnvError) Unwrap() error { return e.Err }

// FdError reports a passed fd that cannot be used, for instance one that
// is closed (EBADF). The fd is left alone.
type FdError struct {
	Fd   int
	Name string
	Err  error
}

// Error describes the failure.
func (e *FdError) Error() string {
	return fmt.Sprintf("systemd: passed fd %d (%q): %v", e.Fd, e.Name, e.Err)
}

// Unwrap returns the underlying error, for errors.Is and errors.As.
func (e *FdError) Unwrap() error { return e.Err }

// ParseListenEnv reads the socket-activation variables through getenv (as
// [os.LookupEnv] does) for the process pid, and returns one name per
// passed fd: fd ListenFdsStart+i is names[i]. It only parses; it touches
// no fd and changes no variable (that is [ListenFds]).
//
// Like sd_listen_fds(3) it returns no names and no error when LISTEN_PID
// or LISTEN_FDS is absent, or when LISTEN_PID names another process: the
// fds were meant for a process that then started this one. It returns an
// [*EnvError] when a variable is malformed: LISTEN_PID not a process ID,
// LISTEN_FDS not a number from 1 to [MaxListenFds], LISTEN_FDNAMES with a
// count of names other than LISTEN_FDS, a character systemd does not
// allow (see [FdName]), or a name longer than [MaxFdNameLen]. Absent
// LISTEN_FDNAMES names every fd [UnknownFdName].
func ParseListenEnv(getenv func(key string) (string, bool), pid int) ([]string, error) {
	pidValue, ok := getenv(EnvListenPID)
	if !ok {
		return nil, nil
	}
	listenPID, err := parseDecimal(pidValue)
	if err == nil && listenPID <= 0 {
		err = errors.New("not a process ID")
	}
	if err != nil {
		return nil, &EnvError{Var: EnvListenPID, Value: pidValue, Err: err}
	}
	if listenPID != pid {
		return nil, nil
	}
	fdsValue, ok := getenv(EnvListenFds)
	if !ok {
		return nil, nil
	}
	n, err := parseDecimal(fdsValue)
	switch {
	case err != nil:
	case n < 1:
		err = errors.New("no fds: must be at least 1")
	case n > MaxListenFds:
		err = fmt.Errorf("more fds than this package accepts (%d)", MaxListenFds)
	}
	if err != nil {
		return nil, &EnvError{Var: EnvListenFds, Value: fdsValue, Err: err}
	}

	namesValue, ok := getenv(EnvListenFdNames)
	if !ok {
		names := make([]string, n)
		for i := range names {
			names[i] = UnknownFdName
		}
		return names, nil
	}
	// Count before splitting so that a huge value costs no allocation.
	if got := strings.Count(namesValue, ":") + 1; got != n {
		return nil, &EnvError{Var: EnvListenFdNames, Value: namesValue,
			Err: fmt.Errorf("%d names for %d fds (LISTEN_FDS)", got, n)}
	}
	names := strings.Split(namesValue, ":")
	for i, name := range names {
		if err := checkFdName(name); err != nil {
			return nil, &EnvError{Var: EnvListenFdNames, Value: namesValue,
				Err: fmt.Errorf("fd %d: %v", ListenFdsStart+i, err)}
		}
	}
	return names, nil
}

// parseDecimal accepts what systemd writes: decimal digits, no sign, no
// spaces.
func parseDecimal(s string) (int, error) {
	neg := strings.HasPrefix(s, "-")
	digits := strings.TrimPrefix(s, "-")
	if !isDigits(digits) {
		return 0, errors.New("not a decimal number")
	}
	if len(strings.TrimLeft(digits, "0")) > 9 {
		if neg {
			return 0, errors.New("negative")
		}
		return 0, errors.New("number too large")
	}
	v, err := strconv.Atoi(digits)
	if err != nil {
		return 0, errors.New("not a decimal number")
	}
	if neg {
		return 0, errors.New("negative")
	}
	return v, nil
}

// ListenFd is one fd that systemd passed: a socket from socket activation
// or anything from the fd store.
type ListenFd struct {
	// Fd is the descriptor number: ListenFdsStart + its index.
	Fd int
	// Name comes from LISTEN_FDNAMES: FileDescriptorName= of the socket
	// unit, FDNAME= of a stored fd, or UnknownFdName.
	Name string
	// File owns Fd when Err is nil; the caller closes it (or passes it on
	// with net.FileListener and friends, which duplicate it, and then
	// closes it). Nil when Err is set.
	File *os.File
	// Err says why the fd cannot be used (an [*FdError], e.g. EBADF for
	// a closed fd). Such an fd is neither wrapped nor closed.
	Err error

	// Type is the socket type (SO_TYPE: syscall.SOCK_STREAM,
	// SOCK_DGRAM, SOCK_SEQPACKET...), 0 when Fd is not a socket.
	Type int
	// Family is the address family (syscall.AF_INET, AF_INET6,
	// AF_UNIX), 0 when Fd is not a socket or its family is one this
	// package does not describe.
	Family int
	// Network is the Go network name for Family and Type: "tcp4",
	// "tcp6", "udp4", "udp6", "unix", "unixgram" or "unixpacket"; empty
	// for anything else.
	Network string
	// Addr is the socket's local address (getsockname) as a
	// *net.TCPAddr, *net.UDPAddr or *net.UnixAddr; nil when Network is
	// empty.
	Addr net.Addr
	// Listening reports whether listen(2) was called on the socket
	// (SO_ACCEPTCONN).
	Listening bool
}

// ListenFds returns the fds systemd passed to this process, in order,
// reading LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as [ParseListenEnv]
// does. It removes the three variables from the environment whenever any
// is set, even when they are malformed or name another process, so that
// no subprocess mistakes them for its own, and it marks every passed fd
// close-on-exec before it looks at any of them. Call it once, early: a
// second call finds nothing.
//
// It returns (nil, nil) when the process was not socket-activated. When
// some fds cannot be used it still returns all of them, the unusable ones
// with Err set, together with an error that joins those [*FdError]s; a
// caller logs that and serves on the others. The caller owns the returned
// Files.
//
// Outside the "unix" build constraint it returns [ErrNotSupported] when
// fds were passed to this process.
func ListenFds() ([]ListenFd, error) {
	names, err := ParseListenEnv(os.LookupEnv, os.Getpid())
	for _, v := range []string{EnvListenPID, EnvListenFds, EnvListenFdNames} {
		os.Unsetenv(v)
	}
	if err != nil || names == nil {
		return nil, err
	}
	return inspectFds(ListenFdsStart, names)
}

// Matches reports whether l is a socket that net.Listen (or
// net.ListenPacket) with this network and address would have created, so
// that a program can use it instead: the same network ("tcp" and "udp"
// take either IP version; stream and seqpacket sockets must be
// listening), the same port (never 0) and the same IP address, where an
// empty, 0.0.0.0 or :: host matches any unspecified address; Unix sockets
// match by path or @abstract name. Host names are not resolved and match
// nothing.
func (l *ListenFd) Matches(network, address string) bool {
	if l.Err != nil || l.Addr == nil || !sameNetwork(network, l.Network) {
		return false
	}
	if l.Type != sockDgram && !l.Listening {
		return false
	}
	switch a := l.Addr.(type) {
	case *net.UnixAddr:
		return address != "" && address == a.Name
	case *net.TCPAddr:
		return matchIP(address, a.IP, a.Port)
	case *net.UDPAddr:
		return matchIP(address, a.IP, a.Port)
	}
	return false
}

func sameNetwork(want, have string) bool {
	switch want {
	case "tcp":
		return have == "tcp4" || have == "tcp6"
	case "udp":
		return have == "udp4" || have == "udp6"
	}
	return want == have
}

func matchIP(address string, ip net.IP, port int) bool {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	p, err := strconv.Atoi(portStr)
	if err != nil || p == 0 || p != port {
		return false
	}
	if host == "" {
		return ip.IsUnspecified()
	}
	host, _, _ = strings.Cut(host, "%") // zones are not compared
	want := net.ParseIP(host)
	if want == nil {
		return false
	}
	if want.IsUnspecified() {
		return ip.IsUnspecified()
	}
	return want.Equal(ip)
}
