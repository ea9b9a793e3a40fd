package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/internal/proc"
	"github.com/seed589fcc9d/tableflip/systemd"
	"golang.org/x/sys/unix"
)

// # Re-executing in place
//
// When the supervisor's own executable file has changed (a deploy of a
// new tableflip), it re-executes itself after the next upgrade attempt,
// with execve: the same pid (systemd's MainPID does not move), the same
// children (the program's generations, which it adopts again, see
// proc.Adopt), and the same descriptors (the sockets with the
// connections in their queues, the notify socket with the messages in
// it, the control socket with the clients in its queue, the releases'
// executables). What lives only in memory (the generations' numbers,
// times and states, the counters, the releases) goes in the environment
// variable stateEnv, as JSON of version StateVersion, which the new image
// reads and removes at once; the descriptors it names are kept open
// across execve and made close-on-exec again by the new image.
//
// Before it executes the new file, the supervisor runs it with
// StateCommand, the state's version and its own command line: a file
// that cannot run, does not know the version or rejects the flags is
// not executed, and the supervisor serves on (and logs why).
//
// Signals: SIGHUP is ignored during the execve (a disposition that
// survives it, and that Go's runtime keeps), so a SIGHUP that comes then
// is lost rather than fatal; one that was already taken is handed over as
// a pending upgrade. SIGTERM cannot be held across: Go's runtime
// installs its handler before the new image can ask for it, so one that
// arrives within those few milliseconds ends the supervisor at once
// (under systemd, the generations then still get systemd's signal and
// drain).

// StateVersion is the version of the state a supervisor hands to its new
// executable.
const StateVersion = 1

// stateEnv carries the state across the execve.
const stateEnv = "TABLEFLIP_RUN_STATE"

type savedState struct {
	V          int
	PID        int
	Started    time.Time
	Sockets    []*socket
	NotifyFD   int
	NotifyName string
	ControlFD  int
	Releases   []*release
	Current    int // index in Releases, or -1
	Previous   int
	Gens       []savedGen
	LastN      uint64
	EverServed bool
	Streak     int
	Attempted  uint64
	Succeeded  uint64
	Failed     uint64
	LastErr    *tableflip.ControlError
	LastErrAt  time.Time
	// PendingUpgrade: a SIGHUP came as the supervisor re-executed.
	PendingUpgrade bool
}

type savedGen struct {
	N                               uint64
	PID                             int
	Release                         int
	Started, ReadyAt, DrainingSince time.Time
	Deadline                        time.Time
	St                              genState
	Why                             startKind
}

// selfChanged reports whether the file at path is another executable
// than the one this process runs.
func selfChanged(path string) (fileID, bool) {
	var disk, running unix.Stat_t
	if unix.Stat(path, &disk) != nil || unix.Stat("/proc/self/exe", &running) != nil {
		return fileID{}, false
	}
	id := fileID{Dev: disk.Dev, Ino: disk.Ino, Size: disk.Size, Mtime: disk.Mtim.Nano()}
	return id, disk.Dev != running.Dev || disk.Ino != running.Ino
}

// maybeReexec re-executes the supervisor if its executable changed and
// nothing is under way: called after each upgrade attempt.
func (s *supervisor) maybeReexec() {
	if s.selfPath == "" || s.starting != nil || s.stopping || s.restart != nil || s.fatal != nil {
		return
	}
	id, changed := selfChanged(s.selfPath)
	if !changed || id == s.rejectedSelf {
		return
	}
	if err := s.checkNewSelf(); err != nil {
		s.rejectedSelf = id
		s.log.Error("tableflip run: not re-executing the new executable; serving on", "path", s.selfPath, "error", err)
		s.sdNotify("status", systemd.Status(statusText("New tableflip at %s rejected: %v", s.selfPath, err)))
		return
	}
	s.log.Info("tableflip run: the supervisor's executable changed; re-executing it in place", "path", s.selfPath)
	err := s.reexec()
	s.log.Error("tableflip run: re-executing failed; serving on", "path", s.selfPath, "error", err)
	s.rejectedSelf = id
}

// checkNewSelf runs the new executable with StateCommand.
func (s *supervisor) checkNewSelf() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := append([]string{StateCommand, strconv.Itoa(StateVersion)}, s.opts.Args[1:]...)
	cmd := exec.CommandContext(ctx, s.selfPath, args...)
	cmd.Dir = s.opts.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", s.selfPath, StateCommand, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// CheckState is StateCommand's side in the new executable: it reports
// whether this executable reads state of version v (args[0]); the rest of
// the command line is checked by the caller.
func CheckState(args []string) error {
	if len(args) == 0 {
		return errors.New("no state version")
	}
	if v, err := strconv.Atoi(args[0]); err != nil || v != StateVersion {
		return fmt.Errorf("state version %q; this tableflip reads version %d", args[0], StateVersion)
	}
	return nil
}

// reexec executes the supervisor's new executable in this process. It
// returns only if that failed, after restoring what it took down.
func (s *supervisor) reexec() error {
	// Stop taking requests: the clients wait in the control socket's
	// queue for the new image.
	if s.ctl != nil {
		s.ctl.Close()
		s.ctl = nil
	}
	signal.Ignore(syscall.SIGHUP)
	pending := false
	// What was posted meanwhile: a stop wins; an upgrade is handed over.
	for drained := false; !drained; {
		select {
		case sig := <-s.sigs:
			if sig != syscall.SIGHUP {
				s.undoReexec()
				s.stop(sig)
				return errors.New("stopped by " + sig.String())
			}
			pending = true
		case ev := <-s.events:
			switch ev := ev.(type) {
			case stopEvent:
				s.undoReexec()
				s.stop(ev.sig)
				return errors.New("stopped by " + ev.sig.String())
			case upgradeEvent:
				pending = true
				if ev.reply != nil {
					ev.reply <- upgradeResult{err: fmt.Errorf("%w: the supervisor is re-executing itself; ask again", tableflip.ErrUpgradeInProgress)}
				}
			case exitEvent:
				s.exited(ev.g)
			case timerEvent:
				if ev.seq == ev.g.seq {
					s.deadline(ev.g)
				}
			}
		default:
			drained = true
		}
	}
	if s.starting != nil || s.restart != nil || s.stopping {
		s.undoReexec()
		return errors.New("a generation is starting")
	}
	s.launcher.discard()

	st := s.saveState(pending)
	b, err := json.Marshal(st)
	if err != nil {
		s.undoReexec()
		return err
	}
	fds := st.fds()
	env := append(os.Environ(), stateEnv+"="+string(b))
	syscall.ForkLock.Lock()
	for _, fd := range fds {
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
	}
	err = unix.Exec(s.selfPath, s.opts.Args, env)
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	syscall.ForkLock.Unlock()
	s.undoReexec()
	return err
}

// undoReexec serves again what reexec took down.
func (s *supervisor) undoReexec() {
	signal.Notify(s.sigs, syscall.SIGHUP)
	s.serveKeptControl()
	s.launcher.prestart()
}

func (s *supervisor) saveState(pending bool) *savedState {
	st := &savedState{
		V: StateVersion, PID: s.pid, Started: s.started, Sockets: s.socks,
		NotifyFD: s.notify.FD, NotifyName: s.notify.Name, ControlFD: s.ctlFD,
		Releases: s.releases, Current: -1, Previous: -1,
		LastN: s.lastN, EverServed: s.everServed, Streak: s.streak,
		Attempted: s.attempted, Succeeded: s.succeeded, Failed: s.failed,
		LastErr: s.lastErr, LastErrAt: s.lastErrAt, PendingUpgrade: pending,
	}
	index := func(r *release) int {
		for i, o := range s.releases {
			if o == r {
				return i
			}
		}
		return -1
	}
	st.Current, st.Previous = index(s.current), index(s.previous)
	for _, g := range s.gens {
		st.Gens = append(st.Gens, savedGen{
			N: g.N, PID: g.PID, Release: index(g.rel), Started: g.Started, ReadyAt: g.ReadyAt,
			DrainingSince: g.DrainingSince, Deadline: g.Deadline, St: g.St, Why: g.why,
		})
	}
	return st
}

// fds lists the descriptors st names.
func (st *savedState) fds() []int {
	fds := []int{st.NotifyFD}
	if st.ControlFD >= 0 {
		fds = append(fds, st.ControlFD)
	}
	for _, sk := range st.Sockets {
		fds = append(fds, sk.FD)
	}
	for _, r := range st.Releases {
		fds = append(fds, r.FD)
	}
	return fds
}

// restore takes over the state of the image this one replaced, if any.
func (s *supervisor) restore() (bool, error) {
	v, ok := os.LookupEnv(stateEnv)
	if !ok {
		return false, nil
	}
	os.Unsetenv(stateEnv)
	var st savedState
	if err := json.Unmarshal([]byte(v), &st); err != nil {
		return false, fmt.Errorf("the state handed over by the supervisor's previous executable: %w", err)
	}
	if st.PID != s.pid {
		// Not ours: a variable that leaked into another process.
		s.log.Warn("tableflip run: ignoring a handed-over state of another process", "pid", st.PID)
		return false, nil
	}
	if st.V != StateVersion {
		return false, fmt.Errorf("the supervisor's previous executable handed over state version %d; this one reads %d", st.V, StateVersion)
	}
	for _, fd := range st.fds() {
		unix.CloseOnExec(fd)
	}
	s.started, s.socks = st.Started, st.Sockets
	notify, err := openNotifySocket(st.NotifyFD, st.NotifyName)
	if err != nil {
		return false, err
	}
	s.notify = notify
	// Served again only once the state is restored and published (Run
	// calls serveKeptControl), so no status answers from an empty one.
	s.ctlFD = st.ControlFD
	s.releases = st.Releases
	at := func(i int) *release {
		if i >= 0 && i < len(s.releases) {
			return s.releases[i]
		}
		return nil
	}
	s.current, s.previous = at(st.Current), at(st.Previous)
	s.lastN, s.everServed, s.streak = st.LastN, st.EverServed, st.Streak
	s.attempted, s.succeeded, s.failed = st.Attempted, st.Succeeded, st.Failed
	s.lastErr, s.lastErrAt = st.LastErr, st.LastErrAt
	s.pendingUpgrade = st.PendingUpgrade
	for _, sg := range st.Gens {
		p, err := proc.Adopt(sg.PID)
		if err != nil {
			// Reaped by the old image just before the execve.
			s.log.Warn("tableflip run: a generation exited as the supervisor re-executed itself", "generation", sg.N, "pid", sg.PID)
			if sg.St == serving {
				s.lostServing = true
			}
			continue
		}
		g := &generation{
			N: sg.N, PID: sg.PID, p: p, rel: at(sg.Release), Started: sg.Started, ReadyAt: sg.ReadyAt,
			DrainingSince: sg.DrainingSince, St: sg.St, why: sg.Why,
		}
		s.gens = append(s.gens, g)
		if g.St == serving {
			s.serving = g
		}
		go func() {
			<-g.p.Done()
			s.post(exitEvent{g})
		}()
		if !sg.Deadline.IsZero() {
			s.setTimer(g, max(0, time.Until(sg.Deadline)))
		}
	}
	return true, nil
}

// resume carries on after restore, once the loop can run.
func (s *supervisor) resume() {
	s.log.Info("tableflip run: re-executed in place", "pid", s.pid, "generations", len(s.gens))
	s.launcher.prestart()
	switch {
	case s.pendingUpgrade:
		s.upgradeAsked(upgradeEvent{by: "SIGHUP (during the re-execution)"})
	case s.lostServing && s.serving == nil:
		s.scheduleReplacement(nil)
	}
}

// serveKeptControl serves the control socket again from the descriptor
// kept for a re-execution, if it is not being served. A failure is logged:
// the generations serve on, and SIGHUP still upgrades.
func (s *supervisor) serveKeptControl() {
	if s.ctlFD < 0 || s.ctl != nil {
		return
	}
	ln, err := fileListener(s.ctlFD)
	if err == nil {
		err = s.serveControl(ln)
	}
	if err != nil {
		s.log.Error("tableflip run: control socket", "error", err)
	}
}

// fileListener is a listener on a duplicate of fd, which stays open.
func fileListener(fd int) (net.Listener, error) {
	f, err := dup.File(fd, "control")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FileListener(f)
}
