//go:build !unix

package tableflip

import (
	"errors"
	"os"
	"syscall"
)

var errClosed = errors.New("closed")

// dupConn holds nothing: without upgrades there is nobody to pass a
// descriptor to.
func dupConn(syscall.Conn) (int, error) { return -1, nil }

// dupFile is never reached: nothing is inherited.
func dupFile(int, string) (*os.File, error) { return nil, ErrNotSupported }

func dupFD(int) (int, error) { return -1, ErrNotSupported }

func closeFD(int) {}
