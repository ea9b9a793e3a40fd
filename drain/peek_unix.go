//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package drain

import (
	"net"
	"syscall"
)

// readable reports whether bytes are waiting in c's receive buffer,
// without consuming them or blocking.
func readable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		buf  [1]byte
		n    int
		perr error
	)
	err = rc.Control(func(fd uintptr) {
		n, _, perr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return err == nil && perr == nil && n > 0
}
