package tableflip

import (
	"os"

	"golang.org/x/sys/unix"
)

// newStateMemfd makes the memfd that keeps state in systemd's fd store.
func newStateMemfd() (*os.File, error) {
	fd, err := unix.MemfdCreate(stateStoreName, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	return os.NewFile(uintptr(fd), "memfd:"+stateStoreName), nil
}
