//go:build unix

package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/loadgen"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// checker runs one check. Its methods run on one goroutine, except
// progressState, which the progress line calls.
type checker struct {
	cfg    *checkConfig
	sig    syscall.Signal
	procs  *proctree.Reaper
	events *procEvents // nil where the kernel does not tell
	prog   *progress
	rep    *report
	epoch  time.Time
	self   int

	dir     string
	logPath string
	pidFile string
	url     string      // plain URL (or the user's)
	tlsURL  string      // the sample server's https URL, if any
	tlsConf *tls.Config // trusts the sample server's certificate

	firstPID int // also the id of the servers' process group
	olds     []int

	loads []*loadgen.Load

	mu       sync.Mutex // guards the fields below, read by the progress line
	current  int
	gen      int
	upgrades int
}

func runCheck(ctx context.Context, cfg *checkConfig, prog *progress) (*report, error) {
	sig, err := parseSignal(cfg.signal)
	if err != nil {
		return nil, usageErrorf("-signal: %v", err)
	}
	c := &checker{cfg: cfg, sig: sig, prog: prog, epoch: time.Now(), self: os.Getpid()}
	c.rep = &report{
		Signal:         signalName(sig),
		Method:         cfg.method,
		UpgradesWanted: cfg.upgrades,
		ServerLog:      cfg.logFile,
		FDSlack:        cfg.fdSlack,
		Leftovers:      []leftover{},
		Problems:       []string{},
		epoch:          c.epoch,
	}
	if cfg.control != "" {
		c.rep.Signal = "none: control socket " + cfg.control
	}
	if slices.Equal(cfg.modes, []loadgen.Mode{loadgen.ModeGRPC}) {
		c.rep.Method = "POST" // whatever -method says
	}
	if cfg.server == nil {
		c.rep.Server = "built-in sample server"
	} else {
		c.rep.Server = strings.Join(cfg.server, " ")
	}
	c.rep.Subreaper = becomeSubreaper()
	c.procs = proctree.New()
	defer c.procs.Close()
	if ev, err := openProcEvents(); err == nil {
		c.events = ev
		c.rep.ProcessEvents = true
		defer ev.close()
	}
	c.dir, err = os.MkdirTemp("", "tableflip-check-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(c.dir)
	defer c.cleanup()

	err = c.check(ctx)
	c.stopLoad()
	if c.loads == nil {
		return nil, err
	}
	c.rep.Elapsed = time.Since(c.epoch)
	if err != nil && !errors.Is(err, context.Canceled) {
		// The first line; the server's output follows on stderr.
		c.rep.Problems = append(c.rep.Problems, strings.SplitN(err.Error(), "\n", 2)[0])
	}
	c.rep.finish(len(cfg.modes) * cfg.conns)
	return c.rep, err
}

func (c *checker) check(ctx context.Context) error {
	if err := c.startServer(); err != nil {
		return err
	}
	if err := c.waitFirstReady(ctx); err != nil {
		return err
	}
	if err := c.startLoad(ctx); err != nil {
		return err
	}
	c.prog.start(c.progressState)
	c.prog.event(fmt.Sprintf("generation 1 (pid %d) ready; load started", c.current))
	if err := pause(ctx, c.cfg.interval); err != nil {
		return err
	}
	c.rep.First = sampleGeneration(1, c.current)
	loadStart := time.Now()
	for n := 1; ; n++ {
		if c.cfg.upgrades > 0 && n > c.cfg.upgrades {
			break
		}
		if c.cfg.duration > 0 && time.Since(loadStart) >= c.cfg.duration {
			break
		}
		if err := c.upgrade(ctx, n); err != nil {
			return err
		}
		if err := pause(ctx, c.cfg.interval); err != nil {
			return err
		}
	}
	c.rep.Last = sampleGeneration(c.gen, c.current)
	c.stopLoad()
	c.findLeftovers()
	if err := c.stopServer(ctx); err != nil {
		return err
	}
	c.findStrays()
	return nil
}

func (c *checker) progressState() progressState {
	s := progressState{wanted: c.cfg.upgrades}
	for _, l := range c.loads {
		n := l.Counts()
		s.requests += n.Requests
		s.failed += n.Failed
		s.ended += n.Ended
	}
	c.mu.Lock()
	s.upgrades, s.gen, s.pid = c.upgrades, c.gen, c.current
	c.mu.Unlock()
	return s
}

func (c *checker) setCurrent(pid int, upgraded bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current = pid
	c.gen++
	if upgraded {
		c.upgrades++
	}
}

func (c *checker) currentPID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

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
	pid, err := startProcess(argv, logf)
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
	// Walk up from pid rather than scan every process: this runs between
	// the new PID and the probe, inside the upgrade-to-ready time.
	for range 64 {
		st, ok := proctree.ReadStat(pid)
		switch {
		case !ok:
			return false
		case st.PPID == c.self:
			return true
		case st.PPID <= 1:
			return false
		}
		pid = st.PPID
	}
	return false
}

func (c *checker) waitFirstReady(ctx context.Context) error {
	ctx2, cancel := context.WithTimeout(ctx, c.cfg.startTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var pid int
	for {
		changed := c.procs.Changed()
		if p, ok := readPIDFile(c.pidFile); ok && c.procs.Alive(p) {
			pid = p
			break
		}
		if !c.procs.Alive(c.firstPID) {
			if p, ok := readPIDFile(c.pidFile); ok && p != c.firstPID && c.procs.Alive(p) {
				pid = p
				break
			}
			e, _ := c.procs.WaitReaped(c.firstPID)
			return serverErrorf("the server exited at once (%s) without writing its PID file %s%s", e, c.pidFile, c.logTail())
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-ctx2.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return serverErrorf("the server (pid %d) did not write its PID file %s within %s (-start-timeout)%s",
				c.firstPID, c.pidFile, c.cfg.startTimeout, c.logTail())
		}
	}
	if !c.ours(pid) {
		return serverErrorf("the PID file %s names pid %d, which the check did not start", c.pidFile, pid)
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
	if err := c.probe(ctx2); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return serverErrorf("the server (pid %d) wrote its PID file but %s does not answer: %v%s", pid, c.url, err, c.logTail())
	}
	c.setCurrent(pid, false)
	return nil
}

// probe waits until the URL answers a request of the first mode (an
// HTTP error status or a wrong line counts: the server is up).
func (c *checker) probe(ctx context.Context) error {
	m := c.cfg.modes[0]
	if m == loadgen.ModeHTTP2 && c.tlsURL != "" {
		m = loadgen.ModeKeepAlive // c.url is the sample server's plain one
	}
	return loadgen.Probe(ctx, loadgen.Options{
		URL:       c.url,
		Mode:      m,
		Method:    c.cfg.method,
		Body:      c.cfg.body,
		Timeout:   time.Second,
		TLSConfig: c.tlsConf,
	})
}

func (c *checker) startLoad(ctx context.Context) error {
	per := c.cfg.interval + c.cfg.upgradeTimeout + c.cfg.exitTimeout
	budget := time.Duration(c.cfg.upgrades+2)*per + c.cfg.duration + 10*time.Second
	for _, m := range c.cfg.modes {
		o := loadgen.Options{
			URL:         c.url,
			Mode:        m,
			Conns:       c.cfg.conns,
			Method:      c.cfg.method,
			Body:        c.cfg.body,
			Duration:    budget,
			MaxRequests: max(1, c.cfg.maxRequests/len(c.cfg.modes)),
			Timeout:     c.cfg.timeout,
			Pace:        c.cfg.pace,
			TLSConfig:   c.tlsConf,
		}
		if m == loadgen.ModeGRPC {
			o.Method = ""
		}
		if m == loadgen.ModeHTTP2 && c.tlsURL != "" {
			o.URL = c.tlsURL
		}
		l, err := loadgen.Start(ctx, o)
		if err != nil {
			c.stopLoad()
			return usageErrorf("%v", err)
		}
		c.loads = append(c.loads, l)
	}
	return nil
}

func (c *checker) stopLoad() {
	if c.rep.results != nil || c.loads == nil {
		return
	}
	for _, l := range c.loads {
		c.rep.results = append(c.rep.results, l.Stop())
	}
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *checker) upgrade(ctx context.Context, n int) (err error) {
	old := c.currentPID()
	gen := c.gen
	t0 := time.Now()
	u := upgradeReport{N: n, OldPID: old, SignalAt: t0.Sub(c.epoch)}
	defer func() { c.rep.Upgrades = append(c.rep.Upgrades, u) }()

	ctx2, cancel := context.WithTimeout(ctx, c.cfg.upgradeTimeout)
	defer cancel()
	var pid int
	server := 0 // under a supervisor (tableflip run): its pid, which stays
	var newGen *newGenWatch
	if c.cfg.control != "" {
		if g := c.servingGeneration(ctx2, old); g != old {
			server, old, u.OldPID = old, g, g
		}
		// The answer names the new generation: no PID file to watch.
		if pid, err = c.controlUpgrade(ctx, ctx2, n, gen, old); err != nil {
			return err
		}
	} else {
		if c.events != nil {
			c.events.watch(old)
			defer c.events.unwatch(old)
		}
		newGen = watchNewGeneration(old)
		if err := sendSignal(old, c.sig); err != nil {
			return serverErrorf("upgrade %d: cannot send %s to generation %d (pid %d): %v%s", n, signalName(c.sig), gen, old, err, c.logTail())
		}
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for pid == 0 {
		changed := c.procs.Changed()
		if p, ok := readPIDFile(c.pidFile); ok && p != old {
			pid = p
			break
		}
		if !c.procs.Alive(old) {
			if p, ok := readPIDFile(c.pidFile); ok && p != old {
				pid = p
				break
			}
			return c.diedOnSignal(n, gen, old, t0)
		}
		var born <-chan struct{}
		if newGen != nil {
			p, how, ok, heard := 0, "", false, false
			if c.events != nil {
				var e proctree.Exit
				if p, e, ok, born, heard = c.events.ended(old); ok {
					how = " (" + e.String() + ")"
				}
			}
			if !heard {
				// Looking may miss a short life; hearing does not.
				p, ok = newGen.ended(c.procs.Alive)
			}
			if ok {
				return serverErrorf("upgrade %d: the new generation (pid %d) ended%s %s after %s, before it was ready; generation %d (pid %d) serves on%s",
					n, p, how, fmtDur(time.Since(t0)), signalName(c.sig), gen, old, c.logTail())
			}
		}
		select {
		case <-born:
		case <-changed:
		case <-tick.C:
		case <-ctx2.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return serverErrorf("upgrade %d: %s still names generation %d (pid %d) %s after %s (-upgrade-timeout): the server ignores the signal or its upgrade failed%s",
				n, c.pidFile, gen, old, c.cfg.upgradeTimeout, signalName(c.sig), c.logTail())
		}
	}
	pidAt := time.Now()
	u.PIDAt = pidAt.Sub(c.epoch)
	if !c.procs.Alive(pid) {
		e, _ := c.procs.WaitReaped(pid)
		return serverErrorf("upgrade %d: the new generation (pid %d) wrote its PID and ended (%s)%s", n, pid, e, c.logTail())
	}
	if !c.ours(pid) {
		return serverErrorf("upgrade %d: the PID file %s names pid %d, which the check did not start", n, c.pidFile, pid)
	}
	if err := c.probe(ctx2); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return serverErrorf("upgrade %d: the new generation (pid %d) wrote its PID but %s does not answer: %v%s", n, pid, c.url, err, c.logTail())
	}
	ready := time.Now()
	u.NewPID, u.ReadyAt, u.ToReady = pid, ready.Sub(c.epoch), ready.Sub(t0)
	c.olds = append(c.olds, old)
	c.setCurrent(cmp.Or(server, pid), true)

	ctx3, cancel3 := context.WithTimeout(ctx, c.cfg.exitTimeout)
	defer cancel3()
	at, err := c.procs.WaitExit(ctx3, old, pollInterval)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		u.OldExitAt = time.Since(c.epoch)
		c.rep.Notes = append(c.rep.Notes, fmt.Sprintf("generation %d (pid %d) was still running %s after its successor was ready (-exit-timeout)", gen, old, c.cfg.exitTimeout))
		c.prog.event(fmt.Sprintf("upgrade %d: pid %d -> %d, ready in %s; old generation still running after %s", n, old, pid, fmtDur(u.ToReady), c.cfg.exitTimeout))
	default:
		u.OldExited = true
		u.OldExitAt = at.Sub(c.epoch)
		u.OldExit = max(0, at.Sub(pidAt))
		c.prog.event(fmt.Sprintf("upgrade %d: pid %d -> %d, ready in %s, old generation exited %s after the new PID", n, old, pid, fmtDur(u.ToReady), fmtDur(u.OldExit)))
	}
	return nil
}

// controlUpgrade upgrades through the control socket and returns the new
// generation's pid.
func (c *checker) controlUpgrade(ctx, ctx2 context.Context, n, gen, old int) (int, error) {
	resp, err := tableflip.ControlCall(ctx2, c.cfg.control, tableflip.ControlUpgrade)
	switch {
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case ctx2.Err() != nil:
		return 0, serverErrorf("upgrade %d: no answer from the control socket %s within %s (-upgrade-timeout)%s", n, c.cfg.control, c.cfg.upgradeTimeout, c.logTail())
	case err != nil:
		return 0, serverErrorf("upgrade %d: %v%s", n, err, c.logTail())
	case !resp.OK:
		return 0, serverErrorf("upgrade %d: generation %d (pid %d) answered: %s%s", n, gen, old, describeControlError(resp.Error), c.logTail())
	case resp.Upgrade.PID == old:
		return 0, serverErrorf("upgrade %d: the control socket names pid %d, the old generation", n, old)
	}
	return resp.Upgrade.PID, nil
}

// diedOnSignal explains an old generation that ended without a successor.
func (c *checker) diedOnSignal(n, gen, old int, t0 time.Time) error {
	e, reaped := c.procs.WaitReaped(old)
	if reaped && e.Status.Signaled() && e.Status.Signal() == c.sig {
		return serverErrorf("upgrade %d: generation %d (pid %d) was killed by %s: the server does not handle that signal (-signal)%s",
			n, gen, old, signalName(c.sig), c.logTail())
	}
	how := "ended"
	if reaped {
		how = "ended (" + e.String() + ")"
	}
	return serverErrorf("upgrade %d: generation %d (pid %d) %s %s after %s, and no new generation wrote its PID to %s%s",
		n, gen, old, how, fmtDur(time.Since(t0)), signalName(c.sig), c.pidFile, c.logTail())
}

// findLeftovers looks, while the last generation runs, for what earlier
// generations left: zombies anywhere below the check and live processes
// outside the last generation's own tree.
func (c *checker) findLeftovers() {
	cur := c.currentPID()
	if !proctree.Supported {
		for i, old := range c.olds {
			if c.procs.Alive(old) {
				c.rep.Leftovers = append(c.rep.Leftovers, leftover{proctree.Stat{PID: old}, fmt.Sprintf("generation %d still running", i+1)})
			}
		}
		return
	}
	inCurrent := map[int]bool{cur: true}
	for _, p := range proctree.Descendants(cur) {
		inCurrent[p.PID] = true
	}
	for _, p := range proctree.Descendants(c.self) {
		switch {
		case p.State == "Z" && p.PPID == c.self:
			// Ours, being reaped.
		case p.State == "Z":
			c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, "zombie: its parent does not wait for it"})
		case slices.Contains(c.olds, p.PID):
			c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, fmt.Sprintf("old generation %d still running", slices.Index(c.olds, p.PID)+1)})
		case inCurrent[p.PID]:
		default:
			c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, "stray process, not part of the running generation"})
		}
	}
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

// findStrays looks for what outlived the last generation. The last
// generation itself is not counted (stopServer has said whether it had to
// be killed), nor a zombie whose parent is already counted.
func (c *checker) findStrays() {
	listed := func(pid int) bool {
		return slices.ContainsFunc(c.rep.Leftovers, func(l leftover) bool { return l.PID == pid })
	}
	for _, p := range proctree.Descendants(c.self) {
		switch {
		case p.PID == c.currentPID(),
			p.State == "Z" && p.PPID == c.self,
			p.State == "Z" && listed(p.PPID),
			listed(p.PID):
			continue
		}
		c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, "outlived the server"})
	}
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
