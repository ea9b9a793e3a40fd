//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// startServer starts the first generation: the built-in sample server,
// or the command given after --, with its output in the -log file.
func (c *checker) startServer() error {
	argv := c.cfg.server
	if argv == nil {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("cannot find this program to run the sample server: %w", err)
		}
		c.pidFile = filepath.Join(c.dir, "server.pid")
		argv = []string{exe, sampleServerCommand,
			"-addr", "127.0.0.1:0",
			"-pidfile", c.pidFile,
			"-addrfile", filepath.Join(c.dir, "server.addr"),
			"-drain-timeout", c.cfg.exitTimeout.String(),
		}
		if c.cfg.control != "" {
			argv = append(argv, "-control", c.cfg.control)
		}
		if slices.Contains(c.cfg.modes, loadgen.ModeHTTP2) {
			cert, key, conf, err := loadgen.WriteLoopbackCert(c.dir)
			if err != nil {
				return fmt.Errorf("cannot make a certificate for the sample server: %w", err)
			}
			c.tlsConf = conf
			// A name of its own: the Upgrader finds inherited listeners
			// by the address they were asked for.
			argv = append(argv, "-tls-addr", "localhost:0", "-cert", cert, "-key", key)
		}
	} else {
		var err error
		if c.pidFile, err = filepath.Abs(c.cfg.pidFile); err != nil {
			return usageErrorf("-pidfile: %v", err)
		}
		if pid, ok := readPIDFile(c.pidFile); ok && c.procs.Alive(pid) {
			return usageErrorf("the PID file %s names pid %d, which is running: is the server already running? Stop it or remove the file", c.pidFile, pid)
		}
		if err := os.Remove(c.pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return usageErrorf("cannot remove the stale PID file %s: %v", c.pidFile, err)
		}
		c.url = c.cfg.url
	}
	c.logPath = c.cfg.logFile
	if c.logPath == "" {
		c.logPath = filepath.Join(c.dir, "server.log")
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	// The upgrade signal and SIGTERM, which the check sends, reach the
	// server with their default action even under nohup.
	pid, err := startProcess(argv, logf, c.sig, syscall.SIGTERM)
	if err != nil {
		return serverErrorf("%v", err)
	}
	c.firstPID = pid
	return nil
}

// logTail returns the end of what the server wrote, for error messages.
func (c *checker) logTail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil || len(b) == 0 {
		return "\n(the server wrote nothing to stdout or stderr)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return "\nlast lines of its output:\n  | " + strings.Join(lines, "\n  | ")
}

// ours reports whether pid is a process that the check started, directly
// or not; where that cannot be known, it trusts the PID file.
func (c *checker) ours(pid int) bool {
	if !proctree.Supported {
		return true
	}
	// An ancestor that ends during the walk (an old generation, just
	// after the handover) has had its children re-parented meanwhile:
	// walk again, from pid's new parent.
	for range 8 {
		if ours, sure := c.walkUp(pid); sure {
			return ours
		}
	}
	return false
}

// walkUp walks up from pid to the check, rather than scan every process:
// this runs between the new PID and the probe, inside the
// upgrade-to-ready time. sure is false if an ancestor ended on the way.
func (c *checker) walkUp(pid int) (ours, sure bool) {
	p := pid
	for range 64 {
		st, ok := proctree.ReadStat(p)
		switch {
		case !ok:
			return false, p == pid
		case st.PPID == c.self:
			return true, true
		case st.PPID <= 1:
			return false, true
		}
		p = st.PPID
	}
	return false, true
}

// waitFirstReady waits until the first generation has written its PID
// file and answers.
func (c *checker) waitFirstReady(ctx context.Context) error {
	ctx2, cancel := context.WithTimeoutCause(ctx, c.cfg.startTimeout, errTimedOut)
	defer cancel()
	pid, err := c.waitPIDFile(ctx2, 0, c.firstPID, nil)
	switch {
	case interrupted(ctx2) != nil:
		return ctx.Err()
	case errors.Is(err, errEnded):
		e, _ := c.procs.WaitReaped(c.firstPID)
		return serverErrorf("the server exited at once (%s) without writing its PID file %s%s", e, c.pidFile, c.logTail())
	case err != nil:
		return serverErrorf("the server (pid %d) did not write its PID file %s within %s (-start-timeout)%s",
			c.firstPID, c.pidFile, c.cfg.startTimeout, c.logTail())
	}
	if c.cfg.server == nil {
		b, err := os.ReadFile(filepath.Join(c.dir, "server.addr"))
		if err != nil {
			return serverErrorf("the sample server did not write its address: %v%s", err, c.logTail())
		}
		addrs := strings.Fields(string(b))
		c.url = "http://" + addrs[0] + "/"
		if len(addrs) > 1 {
			c.tlsURL = "https://" + addrs[1] + "/"
		}
	}
	c.rep.URLs = []string{c.url}
	if c.tlsURL != "" {
		c.rep.URLs = append(c.rep.URLs, c.tlsURL)
	}
	if err := c.confirm(ctx2, "", "the server", pid); err != nil {
		return err
	}
	c.setCurrent(pid, false)
	return nil
}

// errTimedOut is the cause of a context that one of the -…-timeout flags
// ended, as opposed to an interrupt of the whole check.
var errTimedOut = errors.New("timed out")

// interrupted returns ctx's error if ctx has ended other than by its
// own timeout, that is, if the check is being interrupted.
func interrupted(ctx context.Context) error {
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errTimedOut) {
		return ctx.Err()
	}
	return nil
}

// errEnded says that the process waitPIDFile watched ended before the
// PID file named a new pid.
var errEnded = errors.New("ended before the PID file named a new pid")

// waitPIDFile waits until the PID file names a pid other than old, and
// returns that pid. It returns errEnded if watched (the process that
// should start the new generation) ends first, and ctx's error when ctx
// ends. look, if not nil, runs at every wake-up: its error ends the wait,
// and the channel it returns (nil or not) is one more reason to wake.
func (c *checker) waitPIDFile(ctx context.Context, old, watched int, look func() (<-chan struct{}, error)) (int, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		changed := c.procs.Changed()
		if p, ok := readPIDFile(c.pidFile); ok && p != old {
			return p, nil
		}
		if !c.procs.Alive(watched) {
			// It may have handed over just before it ended.
			if p, ok := readPIDFile(c.pidFile); ok && p != old {
				return p, nil
			}
			return 0, errEnded
		}
		var wake <-chan struct{}
		if look != nil {
			var err error
			if wake, err = look(); err != nil {
				return 0, err
			}
		}
		select {
		case <-wake:
		case <-changed:
		case <-tick.C:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// confirm checks the pid that the PID file (or the control socket) named
// for a new generation: that it runs, that the check started it, and
// that it answers. prefix and who begin the error messages.
func (c *checker) confirm(ctx context.Context, prefix, who string, pid int) error {
	if !c.procs.Alive(pid) {
		e, _ := c.procs.WaitReaped(pid)
		return serverErrorf("%s%s (pid %d) wrote its PID and ended (%s)%s", prefix, who, pid, e, c.logTail())
	}
	if !c.ours(pid) {
		return serverErrorf("%sthe PID file %s names pid %d, which the check did not start", prefix, c.pidFile, pid)
	}
	if err := c.probe(ctx); err != nil {
		if err := interrupted(ctx); err != nil {
			return err
		}
		return serverErrorf("%s%s (pid %d) wrote its PID but %s does not answer: %v%s", prefix, who, pid, c.url, err, c.logTail())
	}
	return nil
}

// stopServer stops the last generation with SIGTERM, as a service manager
// would.
func (c *checker) stopServer(ctx context.Context) error {
	cur := c.currentPID()
	if !c.procs.Alive(cur) {
		c.rep.Problems = append(c.rep.Problems, fmt.Sprintf("the last generation (pid %d) had died before the end of the check", cur))
		return nil
	}
	if err := sendSignal(cur, syscall.SIGTERM); err != nil {
		return nil // gone meanwhile; findStrays looks further
	}
	ctx2, cancel := context.WithTimeout(ctx, c.cfg.exitTimeout)
	defer cancel()
	if _, err := c.procs.WaitExit(ctx2, cur, pollInterval); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.rep.Notes = append(c.rep.Notes, fmt.Sprintf("the last generation (pid %d) did not exit within %s of SIGTERM and was killed", cur, c.cfg.exitTimeout))
		killPid(cur)
	}
	return nil
}

// cleanup kills whatever the check started that still runs and waits
// until it is gone, so that the check never leaves processes behind.
func (c *checker) cleanup() {
	if c.firstPID == 0 {
		return
	}
	pids := append([]int{c.firstPID, c.currentPID()}, c.olds...)
	for _, p := range proctree.Descendants(c.self) {
		pids = append(pids, p.PID)
	}
	killGroup(c.firstPID)
	for _, p := range pids {
		if p > 0 && c.procs.Alive(p) {
			killPid(p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, p := range pids {
		if p > 0 {
			c.procs.WaitExit(ctx, p, pollInterval)
		}
	}
}
