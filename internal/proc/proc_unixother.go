//go:build unix && !linux

package proc

import (
	"errors"
	"os"
	"syscall"
)

// sysProcess is a child; without pidfds there are no siblings.
type sysProcess struct {
	proc *os.Process
}

func (p *Process) start(path string, args, env []string, dir string, files []uintptr, _ bool) error {
	pid, err := syscall.ForkExec(path, args, &syscall.ProcAttr{Dir: dir, Env: env, Files: files})
	if err != nil {
		return &os.PathError{Op: "fork/exec", Path: path, Err: err}
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	p.pid = pid
	p.sys = sysProcess{proc: proc}
	return nil
}

func (s *sysProcess) signal(sig syscall.Signal) error {
	err := s.proc.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func (s *sysProcess) wait(int, bool) Status {
	state, err := s.proc.Wait()
	if err != nil {
		return Status{ExitCode: -1}
	}
	return waitStatus(state.Sys().(syscall.WaitStatus))
}

func parentReaps() bool { return false }

// watchPID: without pidfds, kill(pid, 0) is all there is: a zombie counts
// as alive, and a pid reused after the process exited would too.
func watchPID(pid int) (alive func() bool, release func(), ok bool) {
	alive = killAlive(pid)
	return alive, nil, alive()
}
