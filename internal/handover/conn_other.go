//go:build !unix

package handover

import (
	"errors"
	"os"
)

// Supported reports whether this platform can pass descriptors to a new
// process: not here.
const Supported = false

// ErrNotSupported is returned by every operation on a Conn here.
var ErrNotSupported = errors.New("handover: descriptor passing is not supported on this platform")

// Conn is one end of the handover socket; here there is none.
type Conn struct{}

// Pair reports ErrNotSupported.
func Pair() (*Conn, *os.File, error) { return nil, nil, ErrNotSupported }

// NewConn reports ErrNotSupported.
func NewConn(int) (*Conn, error) { return nil, ErrNotSupported }

// WriteFrame reports ErrNotSupported.
func (*Conn) WriteFrame(byte, []byte) error { return ErrNotSupported }

// SendFDs reports ErrNotSupported.
func (*Conn) SendFDs([]int) error { return ErrNotSupported }

// ReceiveFDs reports ErrNotSupported.
func (*Conn) ReceiveFDs(int) ([]int, error) { return nil, ErrNotSupported }

// ReadFrame reports ErrNotSupported.
func (*Conn) ReadFrame() (byte, []byte, error) { return 0, nil, ErrNotSupported }

// Read reports ErrNotSupported.
func (*Conn) Read([]byte) (int, error) { return 0, ErrNotSupported }

// Write reports ErrNotSupported.
func (*Conn) Write([]byte) (int, error) { return 0, ErrNotSupported }

// Close does nothing.
func (*Conn) Close() error { return nil }

// PeerPID is 0: nothing to tell.
func PeerPID(int) int { return 0 }
