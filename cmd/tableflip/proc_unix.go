//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// exitInfo is how and when a process that this one reaped ended.
type exitInfo struct {
	at     time.Time
	status unix.WaitStatus
}

func (e exitInfo) String() string {
	switch {
	case e.at.IsZero():
		return "status unknown"
	case e.status.Exited():
		return "exit status " + strconv.Itoa(e.status.ExitStatus())
	case e.status.Signaled():
		return "killed by " + signalName(e.status.Signal())
	}
	return fmt.Sprintf("wait status %#x", uint32(e.status))
}

// procTable reaps every child of this process (the server it started and,
// as a subreaper, orphaned old generations) and remembers when each one
// ended. It owns wait4: nothing else in the check may wait for a child.
type procTable struct {
	sigs chan os.Signal
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex // guards exits and changed
	exits   map[int]exitInfo
	changed chan struct{} // closed and replaced when exits grows
}

func newProcTable() *procTable {
	t := &procTable{
		sigs:    make(chan os.Signal, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		exits:   map[int]exitInfo{},
		changed: make(chan struct{}),
	}
	signal.Notify(t.sigs, syscall.SIGCHLD)
	go t.loop()
	return t
}

func (t *procTable) loop() {
	defer close(t.done)
	for {
		select {
		case <-t.sigs:
			t.reap()
		case <-t.stop:
			t.reap()
			return
		}
	}
}

func (t *procTable) reap() {
	for t.reapOne() {
	}
}

// reapOne reaps one child that has ended, if any. It holds mu from the
// wait to the record, so that whoever sees under mu that a child of ours
// is gone also sees its exit.
func (t *procTable) reapOne() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ws unix.WaitStatus
	pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
	if errors.Is(err, unix.EINTR) {
		return true
	}
	if err != nil || pid <= 0 {
		return false
	}
	t.exits[pid] = exitInfo{at: time.Now(), status: ws}
	close(t.changed)
	t.changed = make(chan struct{})
	return true
}

// close stops reaping; call it after every child is gone.
func (t *procTable) close() {
	signal.Stop(t.sigs)
	close(t.stop)
	<-t.done
}

func (t *procTable) exit(pid int) (exitInfo, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.exits[pid]
	return e, ok
}

func (t *procTable) changedChan() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// alive reports whether pid still runs. A zombie that another process
// fails to reap counts as ended: its code no longer runs.
func (t *procTable) alive(pid int) bool {
	if _, ok := t.exit(pid); ok {
		return false
	}
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false
	}
	// A zombie of ours is left to the reaping loop: the leader of a
	// multi-threaded process shows as a zombie before its last thread has
	// gone, and wait4 cannot reap it until then.
	if st, ok := readProcStat(pid); ok && st.State == "Z" && st.PPID != os.Getpid() {
		return false
	}
	return true
}

// reaped waits briefly for the exit status of pid, which alive has just
// reported gone: a zombie child of ours is reaped by the loop any moment.
func (t *procTable) reaped(pid int) (exitInfo, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for {
		t.mu.Lock()
		changed := t.changed
		e, ok := t.exits[pid]
		// Under mu: gone and not recorded means another parent reaped
		// it, which leaves no status to us.
		gone := !ok && errors.Is(unix.Kill(pid, 0), unix.ESRCH)
		t.mu.Unlock()
		if ok || gone {
			return e, ok
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return exitInfo{}, false
		}
	}
}

// pollInterval is how often processes that are not our children (and so
// send us no SIGCHLD) and the PID file are looked at.
const pollInterval = time.Millisecond

// waitExit waits until pid has ended or ctx ends, and returns when it
// ended: the reap time for our children, else the time it was seen gone.
func (t *procTable) waitExit(ctx context.Context, pid int) (time.Time, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		changed := t.changedChan()
		if !t.alive(pid) {
			if e, ok := t.exit(pid); ok {
				return e.at, nil
			}
			return time.Now(), nil
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// startProcess starts argv in a process group of its own, so that a
// Ctrl-C on the terminal reaches only the check, which then shuts the
// server down itself; output goes to out.
func startProcess(argv []string, out *os.File) (int, error) {
	path := argv[0]
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			return 0, fmt.Errorf("cannot start %s: not found in $PATH", argv[0])
		}
		path = p
	}
	if fi, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("cannot start %s: %w", argv[0], errors.Unwrap(err))
	} else if fi.IsDir() {
		return 0, fmt.Errorf("cannot start %s: it is a directory", argv[0])
	} else if fi.Mode()&0o111 == 0 {
		return 0, fmt.Errorf("cannot start %s: it is not executable (mode %v)", argv[0], fi.Mode().Perm())
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	p, err := os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{devnull, out, out},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return 0, fmt.Errorf("cannot start %s: %w", argv[0], errors.Unwrap(err))
	}
	pid := p.Pid
	p.Release() // the procTable waits for it
	return pid, nil
}

func sendSignal(pid int, sig syscall.Signal) error {
	return unix.Kill(pid, sig)
}

// killGroup kills the process group that startProcess created.
func killGroup(pgid int) {
	if pgid > 0 {
		unix.Kill(-pgid, unix.SIGKILL)
	}
}

func killPid(pid int) { unix.Kill(pid, unix.SIGKILL) }

var signalNames = map[string]syscall.Signal{
	"HUP":   unix.SIGHUP,
	"INT":   unix.SIGINT,
	"QUIT":  unix.SIGQUIT,
	"TERM":  unix.SIGTERM,
	"USR1":  unix.SIGUSR1,
	"USR2":  unix.SIGUSR2,
	"WINCH": unix.SIGWINCH,
}

// parseSignal accepts HUP, SIGHUP, hup or a number.
func parseSignal(s string) (syscall.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signalNames[name]; ok {
		return sig, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

func signalName(sig syscall.Signal) string {
	for name, s := range signalNames {
		if s == sig {
			return "SIG" + name
		}
	}
	return sig.String()
}
