//go:build unix

package dup

import (
	"errors"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Conn duplicates the descriptor behind c, close-on-exec (F_DUPFD_CLOEXEC
// inside RawConn.Control, so that c cannot be closed meanwhile). The copy
// shares the open file description: blocking mode and socket state are
// those of the original. Closing c does not affect the copy, which the
// caller owns and closes with Close.
func Conn(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	err = rc.Control(func(raw uintptr) {
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err != nil {
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return -1, ErrClosed
		}
		return -1, err
	}
	return fd, dupErr
}

// FD duplicates fd, close-on-exec.
func FD(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// File returns a duplicate of fd as a file named name, which the caller
// owns.
func File(fd int, name string) (*os.File, error) {
	d, err := FD(fd)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(d), name), nil
}

// Close closes fd.
func Close(fd int) { unix.Close(fd) }
