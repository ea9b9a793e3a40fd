//go:build unix

package proctree

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is how and when a process that the Reaper reaped ended.
type Exit struct {
	At     time.Time
	Status syscall.WaitStatus
}

// String describes the exit as "exit status 1" or "killed by SIGKILL".
func (e Exit) String() string {
	switch {
	case e.At.IsZero():
		return "status unknown"
	case e.Status.Exited():
		return "exit status " + strconv.Itoa(e.Status.ExitStatus())
	case e.Status.Signaled():
		return "killed by " + unix.SignalName(e.Status.Signal())
	}
	return fmt.Sprintf("wait status %#x", uint32(e.Status))
}

// Reaper reaps every child of this process as it ends, on SIGCHLD, and
// remembers how each one ended.
type Reaper struct {
	sigs chan os.Signal
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex // guards the fields below
	entries map[int]*entry
	changed chan struct{} // closed and replaced at each reap
}

type entry struct {
	reaped chan struct{} // closed once reaped
	exit   Exit
}

// New starts a Reaper. Call Close once every child is gone.
func New() *Reaper {
	r := &Reaper{
		sigs:    make(chan os.Signal, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		entries: map[int]*entry{},
		changed: make(chan struct{}),
	}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
	return r
}

func (r *Reaper) loop() {
	defer close(r.done)
	// The tick is a safety net for a SIGCHLD that comes between the last
	// wait4 and the select.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for r.reapOne() {
		}
		select {
		case <-r.sigs:
		case <-tick.C:
		case <-r.stop:
			for r.reapOne() {
			}
			return
		}
	}
}

// reapOne reaps one child that has ended, if any. It holds mu from the
// wait to the record, so that whoever sees under mu that a child is gone
// also sees its exit.
func (r *Reaper) reapOne() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ws syscall.WaitStatus
	pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
	if errors.Is(err, syscall.EINTR) {
		return true
	}
	if err != nil || pid <= 0 {
		return false
	}
	e := r.entry(pid)
	select {
	case <-e.reaped:
		// The record of an earlier process with this pid.
		e = &entry{reaped: make(chan struct{})}
		r.entries[pid] = e
	default:
	}
	e.exit = Exit{At: time.Now(), Status: ws}
	close(e.reaped)
	close(r.changed)
	r.changed = make(chan struct{})
	return true
}

// entry returns pid's entry, making it. r.mu is held.
func (r *Reaper) entry(pid int) *entry {
	e := r.entries[pid]
	if e == nil {
		e = &entry{reaped: make(chan struct{})}
		r.entries[pid] = e
	}
	return e
}

// Close stops reaping.
func (r *Reaper) Close() {
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.done
}

// Forget drops the record of an earlier process with pid: pids are reused,
// and a new child has just been started with this one.
func (r *Reaper) Forget(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[pid]; e != nil && closed(e.reaped) {
		delete(r.entries, pid)
	}
}

// Reaped returns a channel that is closed once pid, which must be a child
// of this process or become one, has been reaped.
func (r *Reaper) Reaped(pid int) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.entry(pid).reaped
}

// Exit returns how pid ended, if the Reaper has reaped it.
func (r *Reaper) Exit(pid int) (Exit, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[pid]; e != nil && closed(e.reaped) {
		return e.exit, true
	}
	return Exit{}, false
}

// Changed returns a channel that is closed at the next reap.
func (r *Reaper) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Alive reports whether pid still runs: not reaped here, not gone, and not
// a zombie of another parent (its code no longer runs). A zombie of ours
// is left to the reaping loop: the leader of a multi-threaded process
// shows as a zombie before its last thread has gone, and wait4 cannot reap
// it until then.
func (r *Reaper) Alive(pid int) bool {
	if _, ok := r.Exit(pid); ok {
		return false
	}
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false
	}
	if st, ok := ReadStat(pid); ok && st.State == "Z" && st.PPID != os.Getpid() {
		return false
	}
	return true
}

// WaitReaped waits, for at most a second, for the exit of pid, which
// Alive has just reported gone: a zombie child of ours is reaped any
// moment. ok is false if another parent reaped it, which leaves no status
// here.
func (r *Reaper) WaitReaped(pid int) (Exit, bool) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		r.mu.Lock()
		changed := r.changed
		e := r.entries[pid]
		ok := e != nil && closed(e.reaped)
		// Under mu: gone and not recorded means another parent reaped
		// it.
		gone := !ok && errors.Is(unix.Kill(pid, 0), unix.ESRCH)
		r.mu.Unlock()
		if ok {
			return e.exit, true
		}
		if gone {
			return Exit{}, false
		}
		select {
		case <-changed:
		case <-t.C:
			return Exit{}, false
		}
	}
}

// WaitExit waits until pid has ended or ctx ends, looking every poll at a
// process that is not our child (it sends no SIGCHLD), and returns when it
// ended: the reap time for a child, else the time it was seen gone.
func (r *Reaper) WaitExit(ctx context.Context, pid int, poll time.Duration) (time.Time, error) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		changed := r.Changed()
		if !r.Alive(pid) {
			if e, ok := r.Exit(pid); ok {
				return e.At, nil
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

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
