//go:build !linux

package memfd

import "os"

// Create reports ErrNotSupported.
func Create(string) (*os.File, error) { return nil, ErrNotSupported }
