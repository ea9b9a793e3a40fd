//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procs owns every process the runner starts and every orphan that comes
// back to it: the runner is a child subreaper, so an old generation whose
// parent has exited is re-parented here, and one goroutine reaps them all
// with wait4(-1). Nothing else in the runner may wait for a child (no
// os/exec): the reaper would take its status.
type procs struct {
	mu    sync.Mutex
	procs map[int]*proc
	sigs  chan os.Signal
	done  chan struct{}
}

// proc is a process's exit, as the reaper saw it.
type proc struct {
	exited chan struct{} // closed once reaped
	status syscall.WaitStatus
}

func newProcs() (*procs, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("becoming a child subreaper: %w", err)
	}
	p := &procs{
		procs: map[int]*proc{},
		sigs:  make(chan os.Signal, 1),
		done:  make(chan struct{}),
	}
	signal.Notify(p.sigs, syscall.SIGCHLD)
	go p.reap()
	return p, nil
}

// get returns pid's entry, creating it. The caller holds mu.
func (p *procs) get(pid int) *proc {
	e := p.procs[pid]
	if e == nil {
		e = &proc{exited: make(chan struct{})}
		p.procs[pid] = e
	}
	return e
}

func (p *procs) reap() {
	// The tick is a safety net for a SIGCHLD that arrives between the
	// last wait4 and the select.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			p.mu.Lock()
			e := p.get(pid)
			select {
			case <-e.exited:
				// A stale entry of a reused pid.
				e = &proc{exited: make(chan struct{})}
				p.procs[pid] = e
			default:
			}
			e.status = ws
			close(e.exited)
			p.mu.Unlock()
		}
		select {
		case <-p.sigs:
		case <-tick.C:
		case <-p.done:
			return
		}
	}
}

// forget drops the record of an earlier process with pid: pids are
// reused, and a new process has just been seen with this one.
func (p *procs) forget(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.procs[pid]; e != nil {
		select {
		case <-e.exited:
			delete(p.procs, pid)
		default:
		}
	}
}

// wait returns a channel that is closed once the runner has reaped pid,
// and a function that returns its status after that. pid must be the
// runner's child, or become one. Any number of callers may wait.
func (p *procs) wait(pid int) (<-chan struct{}, func() syscall.WaitStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.get(pid)
	return e.exited, func() syscall.WaitStatus {
		<-e.exited
		return e.status
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
	p.forget(pid)
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

func (p *procs) close() {
	signal.Stop(p.sigs)
	close(p.done)
}

// descendants lists the processes below root, zombies excluded.
func descendants(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state, err := procStat(pid)
		if err != nil || state == 'Z' {
			continue
		}
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procStat reads the parent pid and state of pid.
func procStat(pid int) (ppid int, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name may contain spaces and parentheses: skip past
	// its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 2 {
		return 0, 0, errors.New("malformed stat")
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0][0], err
}

// sample is the footprint of one process.
type sample struct {
	FDs int
	RSS int64 // bytes
}

func sampleProc(pid int) (sample, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	ents, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return sample{}, err
	}
	b, err := os.ReadFile(dir + "/status")
	if err != nil {
		return sample{}, err
	}
	s := sample{FDs: len(ents)}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				s.RSS = kb * 1024
			}
		}
	}
	return s, nil
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
