//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval is how often processes that are not our children (and so
// send us no SIGCHLD) and the PID file are looked at.
const pollInterval = time.Millisecond

// startProcess starts argv in a process group of its own, so that a
// Ctrl-C on the terminal reaches only the check, which then shuts the
// server down itself; output goes to out. The signals in unignored reach
// it with their default action, whatever this process does with them.
func startProcess(argv []string, out *os.File, unignored ...os.Signal) (int, error) {
	unignore(unignored...)
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

// dropped receives the signals that unignore catches, and is never read.
var dropped = make(chan os.Signal, 1)

// unignore makes a process started from now on receive sigs with their
// default action, as a service manager starts a server. A signal that
// this process ignores (SIGHUP, under nohup) stays ignored across exec,
// and a Go program keeps an inherited SIG_IGN for SIGHUP and SIGINT
// unless it asks for the signal. A signal this process catches instead is
// reset to the default by exec; here it is caught and dropped, which is
// what ignoring it was for.
func unignore(sigs ...os.Signal) {
	for _, sig := range sigs {
		if signal.Ignored(sig) {
			signal.Notify(dropped, sig)
		}
	}
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
