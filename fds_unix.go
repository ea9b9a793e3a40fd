//go:build unix

package tableflip

import (
	"errors"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

var errClosed = net.ErrClosed

// dupConn duplicates the descriptor behind c, close-on-exec. The copy
// shares the open file description: blocking mode and socket state are
// those of the original.
func dupConn(c syscall.Conn) (int, error) {
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
			return -1, errClosed
		}
		return -1, err
	}
	return fd, dupErr
}

func dupFile(fd int, name string) (*os.File, error) {
	dup, err := dupFD(fd)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(dup), name), nil
}

// dupFD duplicates fd, close-on-exec.
func dupFD(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

func closeFD(fd int) { unix.Close(fd) }
