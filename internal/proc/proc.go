// Package proc starts the process of a new generation and watches
// processes to their end: the per-OS part of an upgrade that the root
// package keeps out of its portable code.
//
// On Linux a new generation can be started as a sibling rather than a
// child (clone with CLONE_PARENT): its parent is then this process's
// parent. Under a service manager (systemd, or any init that reaps every
// process) that makes each generation the manager's own child, so that
// when the main PID moves to it (MAINPID=, PIDFile=), the manager watches
// it as it watches the process it started: it is not "alien", and a stop
// waits for it to exit instead of going straight to SIGKILL. Such a
// process is watched through a pidfd; its exit status, which only its
// parent can wait for, is read back from the pidfd once the parent has
// reaped it (PIDFD_INFO_EXIT, Linux 6.15), or from /proc while it is a
// zombie on older kernels.
package proc

import (
	"fmt"
	"syscall"
)

// Status is how a process ended.
type Status struct {
	// Known is false when the exit status could not be learnt: a
	// sibling that its parent did not reap in time, or reaped on a
	// kernel that keeps no exit status for pidfds.
	Known bool
	// ExitCode is the exit status, or -1 if a signal ended the process
	// (or the status is not known).
	ExitCode int
	// Signal is the signal that ended the process, or 0.
	Signal syscall.Signal
}

// String describes s as "exit status 1", "killed by signal terminated"
// or "exit status unknown".
func (s Status) String() string {
	switch {
	case !s.Known:
		return "exit status unknown"
	case s.Signal != 0:
		return "killed by signal " + s.Signal.String()
	}
	return fmt.Sprintf("exit status %d", s.ExitCode)
}

func waitStatus(ws syscall.WaitStatus) Status {
	st := Status{Known: true, ExitCode: ws.ExitStatus()}
	if ws.Signaled() {
		st.ExitCode = -1
		st.Signal = ws.Signal()
	}
	return st
}

// Process is a process started by Start.
type Process struct {
	pid     int
	sibling bool
	sys     sysProcess
	done    chan struct{}
	status  Status
}

// PID is the process's pid.
func (p *Process) PID() int { return p.pid }

// Sibling reports whether the process is a child of this process's parent
// rather than of this process.
func (p *Process) Sibling() bool { return p.sibling }

// Done is closed when the process has exited and Status is known (or
// known to be unknown).
func (p *Process) Done() <-chan struct{} { return p.done }

// Status is how the process ended. It may be called once Done is closed.
func (p *Process) Status() Status {
	<-p.done
	return p.status
}

// Signal sends sig to the process, or does nothing if it has been reaped.
func (p *Process) Signal(sig syscall.Signal) error { return p.sys.signal(sig) }

// Start starts the program at path with args and env in dir. files are its
// descriptors: entry i becomes descriptor i, and ^uintptr(0) leaves that
// number closed. With sibling set, and where the platform can (Linux),
// the process is started as a child of this process's parent; elsewhere,
// or if the kernel refuses, it is this process's child.
//
// A goroutine watches the process until it exits; Done is then closed and
// the process reaped (by this process, or by the parent of a sibling).
func Start(path string, args, env []string, dir string, files []uintptr, sibling bool) (*Process, error) {
	p := &Process{done: make(chan struct{})}
	if err := p.start(path, args, env, dir, files, sibling); err != nil {
		return nil, err
	}
	go func() {
		p.status = p.sys.wait(p.pid, p.sibling)
		close(p.done)
	}()
	return p, nil
}

// ParentReaps reports whether this process's parent is a service manager
// or init, which reaps every child it has, so that a sibling started with
// Start is reaped by it: the parent is pid 1 of this pid namespace, or the
// systemd user manager named by $MANAGERPID.
func ParentReaps() bool {
	return parentReaps()
}

// Watch tells whether a process that this process did not start is alive.
type Watch struct {
	alive   func() bool
	release func()
}

// WatchPID starts watching pid. ok is false if pid is gone already. Where
// the platform has pidfds, a pid reused later is never mistaken for the
// process, and a zombie counts as gone; elsewhere a zombie counts as alive.
func WatchPID(pid int) (w *Watch, ok bool) {
	alive, release, ok := watchPID(pid)
	if !ok {
		return nil, false
	}
	return &Watch{alive: alive, release: release}, true
}

// Alive reports whether the process is still running.
func (w *Watch) Alive() bool { return w.alive() }

// Close releases what the watch holds.
func (w *Watch) Close() {
	if w.release != nil {
		w.release()
	}
}

// Gone reports whether pid has exited, zombie or not where the platform
// can tell (Linux).
func Gone(pid int) bool {
	w, ok := WatchPID(pid)
	if !ok {
		return true
	}
	defer w.Close()
	return !w.Alive()
}
