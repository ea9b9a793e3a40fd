// Package peercred asks the kernel who is at the other end of a Unix
// socket connection: SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS and
// FreeBSD. Elsewhere it reports ErrNotSupported, so that a server that
// depends on it refuses everybody rather than serving everybody.
package peercred

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// Cred is who is at the other end of a connection.
type Cred struct {
	// PID is the peer's pid, or 0 where the platform does not tell.
	PID int
	UID int
	// GID is the peer's primary group, or -1 if unknown.
	GID int
	// Groups are the supplementary groups where the platform tells them
	// (the BSDs); nil elsewhere.
	Groups []int
}

// ErrNotSupported is returned where the platform cannot tell.
var ErrNotSupported = errors.New("peercred: no peer credentials on this platform")

// Get returns the credentials of the peer of c, a Unix socket connection.
func Get(c net.Conn) (Cred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Cred{}, fmt.Errorf("peercred: %T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var cred Cred
	var credErr error
	if err := rc.Control(func(fd uintptr) { cred, credErr = get(int(fd)) }); err != nil {
		return Cred{}, err
	}
	return cred, credErr
}
