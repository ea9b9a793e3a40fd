// Package memfd makes anonymous memory files (memfd_create), which only
// Linux has.
package memfd

import "errors"

// ErrNotSupported is returned where there are no memfds.
var ErrNotSupported = errors.ErrUnsupported
