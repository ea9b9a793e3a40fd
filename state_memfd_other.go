//go:build !linux

package tableflip

import (
	"errors"
	"os"
)

// newStateMemfd reports that there are no memfds: state is not stored.
func newStateMemfd() (*os.File, error) { return nil, errors.ErrUnsupported }
