//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/proctree"
	"golang.org/x/sys/unix"
)

// procs owns every process the runner starts and every orphan that comes
// back to it: the runner is a child subreaper, so an old generation whose
// parent has exited is re-parented here, and the Reaper reaps them all.
// Nothing else in the runner may wait for a child (no os/exec).
type procs struct {
	*proctree.Reaper
}

func newProcs() (*procs, error) {
	if err := proctree.BecomeSubreaper(); err != nil {
		return nil, fmt.Errorf("becoming a child subreaper: %w", err)
	}
	return &procs{proctree.New()}, nil
}

// wait returns a channel that is closed once the runner has reaped pid,
// and a function that returns its status after that. pid must be the
// runner's child, or become one. Any number of callers may wait.
func (p *procs) wait(pid int) (<-chan struct{}, func() syscall.WaitStatus) {
	reaped := p.Reaped(pid)
	return reaped, func() syscall.WaitStatus {
		<-reaped
		e, _ := p.Exit(pid)
		return e.Status
	}
}

// start starts a program with the given standard streams (nil for
// /dev/null).
func (p *procs) start(argv, env []string, stdout, stderr *os.File) (int, error) {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	files := []uintptr{null.Fd(), null.Fd(), null.Fd()}
	if stdout != nil {
		files[1] = stdout.Fd()
	}
	if stderr != nil {
		files[2] = stderr.Fd()
	}
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{Env: env, Files: files})
	if err != nil {
		return 0, err
	}
	p.Forget(pid)
	return pid, nil
}

// killAll kills every descendant of the runner and reaps them, giving up
// after timeout.
func (p *procs) killAll(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		desc := descendants(os.Getpid())
		if len(desc) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes left behind: %v", desc)
		}
		for _, pid := range desc {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *procs) close() { p.Close() }

// descendants lists the processes below root, zombies excluded.
func descendants(root int) []int {
	var out []int
	for _, st := range proctree.Descendants(root) {
		if st.State != "Z" {
			out = append(out, st.PID)
		}
	}
	return out
}

// sample is the footprint of one process.
type sample struct {
	FDs int
	RSS int64 // bytes
}

func sampleProc(pid int) (sample, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return sample{}, err
	}
	kib, ok := proctree.RSSKiB(pid)
	if !ok {
		return sample{}, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	return sample{FDs: len(ents), RSS: int64(kib) * 1024}, nil
}

// raiseNoFile sets the soft limit on open files to the hard one. Setting
// it explicitly (rather than relying on the Go runtime's own raise) makes
// the processes the runner starts inherit it.
func raiseNoFile() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}
