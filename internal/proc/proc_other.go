//go:build !unix

package proc

import (
	"errors"
	"syscall"
)

var errNotSupported = errors.New("proc: not supported on this platform")

type sysProcess struct{}

func (p *Process) start(string, []string, []string, string, []uintptr, bool) error {
	return errNotSupported
}

func (s *sysProcess) signal(syscall.Signal) error { return errNotSupported }

func (s *sysProcess) wait(int, bool) Status { return Status{ExitCode: -1} }

func parentReaps() bool { return false }

func watchPID(int) (alive func() bool, release func(), ok bool) { return nil, nil, false }

// SignalName names sig.
func SignalName(sig syscall.Signal) string { return sig.String() }

// Open reports false: there are no descriptors to hand on here.
func Open(int) bool { return false }
