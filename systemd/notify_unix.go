//go:build unix

package systemd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func checkSocketAddr(socket string) error {
	switch {
	case socket == "":
		return ErrNoSocket
	case socket[0] == '@':
		if runtime.GOOS != "linux" && runtime.GOOS != "android" {
			return fmt.Errorf("%w: abstract socket %q (Linux only)", ErrNotSupported, socket)
		}
	case socket[0] != '/':
		return fmt.Errorf("systemd: NOTIFY_SOCKET %q: not an absolute path or @abstract name", truncate(socket))
	}
	// sun_path must also hold the terminating NUL of a path.
	if maxLen := len(unix.RawSockaddrUnix{}.Path) - 1; len(socket) > maxLen {
		return fmt.Errorf("systemd: NOTIFY_SOCKET %q: longer than a socket address can be (%d bytes)", truncate(socket), maxLen)
	}
	return nil
}

func send(socket string, msg []byte, fds []int) error {
	// Hold ForkLock so that no fork between socket and CloseOnExec
	// inherits the socket (SOCK_CLOEXEC is not portable).
	syscall.ForkLock.RLock()
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err == nil {
		unix.CloseOnExec(s)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return err
	}
	defer unix.Close(s)

	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	// x/sys maps a leading '@' to the abstract namespace on Linux.
	return unix.Sendmsg(s, msg, oob, &unix.SockaddrUnix{Name: socket}, 0)
}

func barrier(n *Notifier, timeout time.Duration) error {
	// As in send: no pipe2 everywhere (macOS), so the fork lock keeps
	// a fork from inheriting the pipe before it is close-on-exec.
	var p [2]int
	syscall.ForkLock.RLock()
	err := unix.Pipe(p[:])
	if err == nil {
		unix.CloseOnExec(p[0])
		unix.CloseOnExec(p[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return fmt.Errorf("systemd: barrier: %w", os.NewSyscallError("pipe", err))
	}
	defer unix.Close(p[0])
	err = n.NotifyWithFds(p[1:], Barrier)
	// systemd holds the only other copy of the write end now.
	unix.Close(p[1])
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return fmt.Errorf("systemd: barrier not answered within %s: %w", timeout, os.ErrDeadlineExceeded)
		}
		k, err := unix.Poll(fds, ms)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("systemd: barrier: %w", os.NewSyscallError("poll", err))
		case k > 0:
			// POLLHUP: systemd closed its end.
			return nil
		}
	}
}
