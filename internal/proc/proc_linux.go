//go:build linux

package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysProcess holds the pidfd of a started process, or none on kernels
// without pidfds (before 5.3), where the process is never a sibling.
type sysProcess struct {
	mu    sync.Mutex // guards pidfd and pid against signal after reaping
	pidfd int
	pid   int
}

func (p *Process) start(path string, args, env []string, dir string, files []uintptr, sibling bool) error {
	// A child's pid is ours until we reap it: only a sibling, which
	// its parent reaps, needs a pidfd to be signalled and watched safely.
	pidfd := -1
	sys := &syscall.SysProcAttr{}
	if sibling {
		sys.Cloneflags = syscall.CLONE_PARENT
		sys.PidFD = &pidfd
	}
	attr := &syscall.ProcAttr{Dir: dir, Env: env, Files: files, Sys: sys}
	pid, err := syscall.ForkExec(path, args, attr)
	if sibling && (errors.Is(err, syscall.EINVAL) || err == nil && pidfd < 0) {
		// pid 1 of a namespace may not use CLONE_PARENT, and a sibling
		// without a pidfd could not be watched.
		if err == nil {
			// Started without a pidfd: nothing can watch it; stop it.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		sibling = false
		sys.Cloneflags = 0
		sys.PidFD = nil
		pidfd = -1
		pid, err = syscall.ForkExec(path, args, attr)
	}
	if err != nil {
		return &os.PathError{Op: "fork/exec", Path: path, Err: err}
	}
	p.pid, p.sibling = pid, sibling
	p.sys = sysProcess{pidfd: pidfd, pid: pid}
	return nil
}

func (p *Process) adopt(pid int) error {
	// A child of this process, alive or a zombie not reaped yet: as for
	// a child that Start started, its pid is ours until we reap it.
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err != nil {
		return fmt.Errorf("proc: pid %d is not a child of this process: %w", pid, err)
	}
	p.sys = sysProcess{pidfd: -1, pid: pid}
	return nil
}

func (s *sysProcess) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.pid < 0:
		return nil // reaped
	case s.pidfd < 0:
		return syscall.Kill(s.pid, sig)
	}
	err := unix.PidfdSendSignal(s.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// wait returns how the process ended, once it has. Until then the pid
// cannot be reused (it is a child's, or the pidfd's), so signal never
// reaches another process.
func (s *sysProcess) wait(pid int, sibling bool) Status {
	defer s.release()
	if !sibling {
		// Wait for the exit without reaping, then reap under the lock:
		// signal must not send to a pid that someone else has by then.
		if s.pidfd >= 0 {
			poll(s.pidfd, unix.POLLIN, -1)
		} else {
			var info unix.Siginfo
			for errors.Is(unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil), unix.EINTR) {
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		s.pid = -1
		return waitStatus(ws)
	}
	poll(s.pidfd, unix.POLLIN, -1)
	// Exited. Its parent reaps it; the pidfd then reports the exit status
	// (and POLLHUP, on kernels that have PIDFD_INFO_EXIT).
	if st, ok := zombieStatus(pid, s.pidfd); ok {
		return st
	}
	poll(s.pidfd, unix.POLLHUP, reapWait)
	if st, ok := pidfdExit(s.pidfd); ok {
		return st
	}
	return Status{ExitCode: -1}
}

func (s *sysProcess) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pidfd >= 0 {
		unix.Close(s.pidfd)
	}
	s.pidfd, s.pid = -1, -1
}

// reapWait bounds how long a sibling's exit status is waited for once it
// has exited: a service manager reaps its children at once.
const reapWait = time.Second

func poll(fd int, events int16, timeout time.Duration) {
	ms := -1
	if timeout >= 0 {
		ms = int(timeout.Milliseconds())
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
	deadline := time.Now().Add(timeout)
	for {
		_, err := unix.Poll(fds, ms)
		if !errors.Is(err, unix.EINTR) {
			return
		}
		if timeout >= 0 {
			ms = max(0, int(time.Until(deadline).Milliseconds()))
		}
	}
}

// pidfdInfo is struct pidfd_info of <linux/pidfd.h>, its first version
// (PIDFD_INFO_SIZE_VER0, 64 bytes).
type pidfdInfo struct {
	mask                                          uint64
	cgroupID                                      uint64
	pid, tgid, ppid, ruid, rgid, euid, egid, suid uint32
	sgid, fsuid, fsgid                            uint32
	exitCode                                      int32
}

const (
	pidfdInfoExit = 1 << 3
	// pidfdGetInfo is PIDFD_GET_INFO: _IOWR(0xFF, 11, struct pidfd_info).
	pidfdGetInfo = 3<<30 | uintptr(unsafe.Sizeof(pidfdInfo{}))<<16 | 0xFF<<8 | 11
)

// pidfdExit reads the exit status of a reaped process from its pidfd.
func pidfdExit(pidfd int) (Status, bool) {
	info := pidfdInfo{mask: pidfdInfoExit}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(pidfd), pidfdGetInfo, uintptr(unsafe.Pointer(&info)))
	if errno != 0 || info.mask&pidfdInfoExit == 0 {
		return Status{}, false
	}
	return waitStatus(syscall.WaitStatus(info.exitCode)), true
}

// zombieStatus reads the exit status of pid from /proc while it is a
// zombie. The pidfd, still signalable, proves that the zombie read is the
// process, not a later one with the same pid.
func zombieStatus(pid, pidfd int) (Status, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Status{}, false
	}
	// The command name, in parentheses, may hold anything: fields are
	// counted after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Status{}, false
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is the state (field 3 of proc(5)); exit_code is field 52.
	if len(fields) < 50 || string(fields[0]) != "Z" {
		return Status{}, false
	}
	code, err := strconv.Atoi(string(fields[49]))
	if err != nil || unix.PidfdSendSignal(pidfd, 0, nil, 0) != nil {
		return Status{}, false
	}
	return waitStatus(syscall.WaitStatus(code)), true
}

func parentReaps() bool {
	if os.Getpid() == 1 {
		return false
	}
	ppid := os.Getppid()
	return ppid == 1 || os.Getenv("MANAGERPID") == strconv.Itoa(ppid)
}

// watchPID opens a pidfd now, so that a pid reused later is never
// mistaken for the process; it becomes readable when the process exits,
// zombie or not. Kernels before 5.3 fall back to kill(0).
func watchPID(pid int) (alive func() bool, release func(), ok bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil, nil, false
	case err != nil:
		return killAlive(pid), nil, killAlive(pid)()
	}
	alive = func() bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err == nil && n == 0
		}
	}
	return alive, func() { unix.Close(fd) }, true
}
