//go:build !unix

package dup

import (
	"os"
	"syscall"
)

// Conn has nothing to duplicate for: without descriptor passing nobody
// receives a copy.
func Conn(syscall.Conn) (int, error) { return -1, ErrNotSupported }

// FD reports ErrNotSupported.
func FD(int) (int, error) { return -1, ErrNotSupported }

// File reports ErrNotSupported.
func File(int, string) (*os.File, error) { return nil, ErrNotSupported }

// Close does nothing.
func Close(int) {}
