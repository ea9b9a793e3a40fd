// Package dup duplicates and closes descriptors for the handover, with
// close-on-exec set atomically, where the platform has descriptors to pass.
package dup

import (
	"errors"
	"net"
)

// ErrClosed is returned by Conn for a socket that its owner has closed.
var ErrClosed = net.ErrClosed

// ErrNotSupported is returned where there are no descriptors to pass.
var ErrNotSupported = errors.New("dup: not supported on this platform")
