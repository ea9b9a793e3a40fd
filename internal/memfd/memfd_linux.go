//go:build linux

package memfd

import (
	"os"

	"golang.org/x/sys/unix"
)

// Create makes a memfd named name, close-on-exec.
func Create(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	return os.NewFile(uintptr(fd), "memfd:"+name), nil
}
