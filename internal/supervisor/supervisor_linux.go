package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/internal/pidfile"
	"github.com/seed589fcc9d/tableflip/internal/proc"
	"github.com/seed589fcc9d/tableflip/systemd"
	"golang.org/x/sys/unix"
)

// killGrace is how long a new generation that failed has between
// Options.StopSignal and SIGKILL (at most Options.UpgradeTimeout), as in
// the library.
const killGrace = 5 * time.Second

// supervisor is one run. Its loop (run) owns every field below events;
// the other goroutines (signals, the notify socket, the control socket,
// process watchers, timers, probes) post events to it.
type supervisor struct {
	opts     Options
	log      *slog.Logger
	pid      int
	started  time.Time
	selfPath string // the supervisor's executable, where it was found

	socks    []*socket
	notify   *notifySocket
	ctlFD    int // the control socket's listening descriptor, or -1
	ctl      *tableflip.ControlServer
	sd       *systemd.Notifier // nil outside systemd
	launcher *launcher
	// probeAddr and probeURL are where -ready tcp and http connect.
	probeAddr string
	probeURL  *urlTarget

	events chan event
	quit   chan struct{} // closed when the loop has returned
	sigs   chan os.Signal

	gens       []*generation // alive, oldest first
	serving    *generation
	starting   *generation
	lastN      uint64 // the last generation number that served
	everServed bool
	stopping   bool
	current    *release   // the serving generation's
	previous   *release   // the one that served before current
	releases   []*release // every one open: these, and live generations'
	streak     int        // replacements in a row of generations that died
	restart    *time.Timer
	restartSeq int
	attempted  uint64
	succeeded  uint64
	failed     uint64
	lastErr    *tableflip.ControlError
	lastErrAt  time.Time
	fatal      error // the first generation failed: Run returns it
	// rejectedSelf is a new executable of the supervisor's own that
	// failed its check: not tried again.
	rejectedSelf fileID
	// From a re-execution: an upgrade asked for meanwhile; the serving
	// generation exited meanwhile.
	pendingUpgrade, lostServing bool

	mu   sync.Mutex // guards snap, which Status copies
	snap tableflip.Stats
}

// genState is where a generation is in its life.
type genState int

const (
	starting genState = iota // started, not ready yet
	serving                  // ready; the one that serves
	draining                 // told to stop; draining its connections
	failing                  // failed before it was ready; being stopped
)

// startKind says why a generation was started.
type startKind int

const (
	kindFirst    startKind = iota // the first, at start
	kindUpgrade                   // an upgrade asked for
	kindRestart                   // replaces one that died after it was ready
	kindRollback                  // the previous release replaces one that died
)

// generation is one process of the program.
type generation struct {
	N             uint64
	PID           int
	p             *proc.Process
	rel           *release
	Started       time.Time
	ReadyAt       time.Time
	DrainingSince time.Time
	St            genState
	why           startKind
	// reason says why a failing generation failed; execErr why it could
	// not be executed.
	reason  error
	execErr error
	// reply waits for the outcome of the upgrade that started it.
	reply       chan upgradeResult
	cancelProbe context.CancelFunc
	timer       *time.Timer
	seq         int
	// Deadline is when timer fires, kept across a re-execution.
	Deadline time.Time
}

type upgradeResult struct {
	out tableflip.UpgradeOutcome
	err error
}

// Events, posted to the loop.
type (
	event        any
	upgradeEvent struct {
		reply chan upgradeResult // nil: nobody waits (a signal)
		by    string
	}
	stopEvent     struct{ sig os.Signal }
	notifyEvent   struct{ msg notifyMsg }
	exitEvent     struct{ g *generation }
	launchedEvent struct {
		g   *generation
		err error
	}
	readyEvent struct{ g *generation }
	timerEvent struct {
		g   *generation
		seq int
	}
	restartEvent struct{ seq int }
)

// Run supervises opts.Program until SIGTERM or SIGINT, and upgrades it on
// SIGHUP or through the control socket; see the package documentation.
// It returns nil after a stop, and an error when it could not start, or
// when the first generation failed before it was ready.
func Run(opts Options) error {
	// First of all: from here on these signals cannot kill the
	// supervisor.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	// Descriptors inherited from whoever started the supervisor are
	// not the program's business (systemd closes them too); those it
	// hands over are marked again where they are taken.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)

	s := &supervisor{
		opts:   opts,
		log:    opts.Logger,
		pid:    os.Getpid(),
		ctlFD:  -1,
		events: make(chan event, 64),
		quit:   make(chan struct{}),
		sigs:   sigs,
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.opts.Dir == "" {
		s.opts.Dir, _ = os.Getwd()
	}
	if len(opts.Args) > 0 {
		if p, err := findExecutable(opts.Args[0], s.opts.Dir); err == nil {
			s.selfPath = p
		}
	}
	if n, err := systemd.NewNotifier(); err == nil {
		s.sd = n
	} else if !errors.Is(err, systemd.ErrNoSocket) {
		s.log.Warn("tableflip run: systemd notifications are off", "error", err)
	}

	restored, err := s.restore()
	if err != nil {
		return err
	}
	if !restored {
		if err := s.setUp(); err != nil {
			return err
		}
	}
	if err := s.setUpProbe(); err != nil {
		s.tearDown()
		return err
	}
	s.launcher = newLauncher(opts.args0(), programEnv(os.Environ(), s.socks, s.notify.Name), s.opts.Dir, s.socks)
	go s.notify.read(func(m notifyMsg) { s.post(notifyEvent{m}) })
	go s.forwardSignals()
	if !restored {
		if err := s.startGeneration(kindFirst, nil); err != nil {
			s.tearDown()
			return err
		}
	} else {
		s.resume()
	}
	s.publish()
	s.serveKeptControl()
	s.run()
	s.tearDown()
	return s.fatal
}

// args0 is the name the supervisor's zygotes run under: its own.
func (o Options) args0() string {
	if len(o.Args) > 0 {
		return o.Args[0]
	}
	return "tableflip"
}

// setUp takes or makes the sockets, the notify socket and the control
// socket, on a fresh start.
func (s *supervisor) setUp() error {
	s.started = time.Now()
	socks, err := openSockets(s.opts.Listen, s.log)
	if err != nil {
		return err
	}
	s.socks = socks
	if s.notify, err = newNotifySocket(); err != nil {
		s.tearDown()
		return err
	}
	if s.opts.ControlSocket != "" {
		ln, err := tableflip.ListenControl(s.opts.ControlSocket, s.opts.ControlGroup)
		if err != nil {
			s.tearDown()
			return err
		}
		if err := s.serveControl(ln); err != nil {
			s.tearDown()
			return err
		}
	}
	for _, sk := range s.socks {
		s.log.Info("tableflip run: socket", "fd", 3+slices.Index(s.socks, sk), "name", sk.Spec.Name,
			"network", sk.Spec.Network, "addr", sk.Spec.Addr, "from_systemd", sk.Systemd)
	}
	return nil
}

// serveControl serves the control socket ln, keeping a descriptor of it
// for a re-execution.
func (s *supervisor) serveControl(ln net.Listener) error {
	if s.ctlFD < 0 {
		fd, err := dup.Conn(ln.(syscall.Conn))
		if err != nil {
			ln.Close()
			return fmt.Errorf("control socket: %w", err)
		}
		s.ctlFD = fd
	}
	ctl, err := tableflip.ServeControl(ln, s.opts.ControlGroup, s, s.log)
	if err != nil {
		ln.Close()
		return err
	}
	s.ctl = ctl
	return nil
}

// setUpProbe finds where -ready tcp and http connect.
func (s *supervisor) setUpProbe() error {
	r := s.opts.Ready
	switch r.Mode {
	case ReadyTCP:
		s.probeAddr = r.Addr
		if s.probeAddr == "" {
			for _, sk := range s.socks {
				if strings.HasPrefix(sk.Spec.Network, "tcp") {
					s.probeAddr = dialable(sk.Spec.Addr)
					break
				}
			}
		}
		if s.probeAddr == "" {
			return errors.New("-ready tcp: the program gets no TCP socket to connect to (-listen tcp://…); name one with -ready tcp://host:port")
		}
	case ReadyHTTP:
		s.probeAddr = r.URL.Host
		s.probeURL = &urlTarget{host: r.URL.Host, path: r.URL.RequestURI()}
	}
	return nil
}

// dialable turns a listening address into one to connect to: an
// unspecified host is the loopback address.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// tearDown releases everything, at the end.
func (s *supervisor) tearDown() {
	if s.launcher != nil {
		s.launcher.discard()
	}
	if s.ctl != nil {
		s.ctl.Close()
	}
	if s.ctlFD >= 0 {
		syscall.Close(s.ctlFD)
		os.Remove(s.opts.ControlSocket)
	}
	if s.notify != nil {
		s.notify.close()
		s.notify.closeFD()
	}
	closeSockets(s.socks)
	for _, r := range s.releases {
		r.close()
	}
	if s.opts.PIDFile != "" {
		pidfile.Remove(s.opts.PIDFile, s.pid)
	}
}

// post hands ev to the loop, unless it has returned.
func (s *supervisor) post(ev event) {
	select {
	case s.events <- ev:
	case <-s.quit:
	}
}

func (s *supervisor) forwardSignals() {
	for {
		select {
		case sig := <-s.sigs:
			if sig == syscall.SIGHUP {
				s.post(upgradeEvent{by: "SIGHUP"})
			} else {
				s.post(stopEvent{sig})
			}
		case <-s.quit:
			return
		}
	}
}

// run is the loop: it handles one event at a time until the supervisor
// has stopped and every generation has exited.
func (s *supervisor) run() {
	defer close(s.quit)
	for !s.finished() {
		switch ev := (<-s.events).(type) {
		case upgradeEvent:
			s.upgradeAsked(ev)
		case stopEvent:
			s.stop(ev.sig)
		case notifyEvent:
			s.notified(ev.msg)
		case launchedEvent:
			s.launched(ev.g, ev.err)
		case readyEvent:
			select {
			case <-ev.g.p.Done():
				// Ended before it was found ready: its exit event,
				// which follows, fails it.
			default:
				if ev.g.St == starting {
					s.ready(ev.g)
				}
			}
		case exitEvent:
			s.exited(ev.g)
		case timerEvent:
			if ev.seq == ev.g.seq {
				s.deadline(ev.g)
			}
		case restartEvent:
			if ev.seq == s.restartSeq && s.serving == nil && s.starting == nil && !s.stopping {
				s.replace()
			}
		}
		s.publish()
	}
}

func (s *supervisor) finished() bool {
	return s.fatal != nil && len(s.gens) == 0 || s.stopping && len(s.gens) == 0
}

// # One upgrade
//
// upgradeAsked (a SIGHUP, systemd's reload, the control socket) starts a
// new generation (startGeneration) unless one is starting; the new
// generation is ready when launched has seen it executed and READY=1 or a
// probe says so (ready): the old one then drains (drain) and the answer
// goes out. A new generation that exits first (exited), or misses
// UpgradeTimeout (deadline), fails the upgrade: it is stopped and reaped,
// and only then is the answer, with its exit status, sent (failedStart).

func (s *supervisor) upgradeAsked(ev upgradeEvent) {
	answer := func(err error) {
		s.log.Warn("tableflip run: upgrade refused", "by", ev.by, "reason", err)
		if ev.reply != nil {
			ev.reply <- upgradeResult{err: err}
		}
	}
	switch {
	case s.stopping:
		answer(tableflip.ErrStopped)
		return
	case s.starting != nil && !s.everServed:
		answer(fmt.Errorf("%w: the first generation (pid %d) is starting", tableflip.ErrNotReady, s.starting.PID))
		return
	case s.starting != nil:
		answer(fmt.Errorf("%w: generation %d (pid %d) is starting", tableflip.ErrUpgradeInProgress, s.starting.N, s.starting.PID))
		return
	}
	s.log.Info("tableflip run: upgrade requested", "by", ev.by)
	s.cancelRestart()
	s.attempted++
	s.sdNotify("reloading", systemd.Reloading, monotonic(), systemd.Status("Upgrading: starting a new generation"))
	if err := s.startGeneration(kindUpgrade, ev.reply); err != nil {
		s.failedStart(kindUpgrade, err, ev.reply)
	}
}

// startGeneration starts a generation of the program. A failure to start
// anything at all is returned; a process that fails later is handled as
// its events come.
func (s *supervisor) startGeneration(kind startKind, reply chan upgradeResult) error {
	rel, req, exe, err := s.releaseFor(kind)
	if err != nil {
		return err
	}
	z, err := s.launcher.take()
	if err != nil {
		s.prune()
		return err
	}
	g := &generation{
		N: s.lastN + 1, PID: z.p.PID(), p: z.p, rel: rel, Started: time.Now(),
		St: starting, why: kind, reply: reply,
	}
	s.gens = append(s.gens, g)
	s.starting = g
	go func() {
		<-g.p.Done()
		s.post(exitEvent{g})
	}()
	z.exec(req, exe, func(err error) { s.post(launchedEvent{g, err}) })
	s.setTimer(g, s.opts.UpgradeTimeout)
	how := req.Path
	if req.ByFD {
		how = fmt.Sprintf("%s (by descriptor: the file was replaced)", rel.Path)
	}
	s.log.Info("tableflip run: generation starting", "generation", g.N, "pid", g.PID, "why", kindNames[kind], "executable", how)
	if kind != kindFirst {
		s.sdNotify("extend timeout", systemd.ExtendTimeout(s.opts.UpgradeTimeout+s.killGrace()),
			systemd.Status(statusText("Starting generation %d (pid %d, %s)", g.N, g.PID, kindNames[kind])))
	}
	return nil
}

var kindNames = map[startKind]string{
	kindFirst: "first", kindUpgrade: "upgrade", kindRestart: "replacing one that died", kindRollback: "rollback",
}

// releaseFor says what to execute for a generation started for kind.
func (s *supervisor) releaseFor(kind startKind) (*release, zygoteRequest, int, error) {
	req := zygoteRequest{Argv: s.opts.Program}
	var rel *release
	switch kind {
	case kindRestart:
		rel = s.current
	case kindRollback:
		rel = s.previous
	}
	if rel != nil {
		req.Path = rel.Path
		if onDisk, err := openRelease(rel.Path); err == nil {
			req.ByFD = onDisk.ID != rel.ID
			onDisk.close()
		} else {
			req.ByFD = true
		}
		if !req.ByFD {
			return rel, req, -1, nil
		}
		return rel, req, rel.FD, nil
	}
	path, err := findExecutable(s.opts.Program[0], s.opts.Dir)
	if err != nil {
		return nil, req, -1, err
	}
	req.Path = path
	rel, err = openRelease(path)
	if err != nil {
		return nil, req, -1, err
	}
	for _, known := range s.releases {
		if known.ID == rel.ID {
			rel.close()
			return known, req, -1, nil
		}
	}
	s.releases = append(s.releases, rel)
	return rel, req, -1, nil
}

// launched: the zygote has executed the program, or could not.
func (s *supervisor) launched(g *generation, err error) {
	if err != nil {
		// Its exit, which follows, fails the start.
		g.execErr = err
		return
	}
	if g.St != starting {
		return
	}
	tree := func() []int { return processTree(g.PID) }
	switch s.opts.Ready.Mode {
	case ReadyDelay:
		time.AfterFunc(s.opts.Ready.Delay, func() { s.post(readyEvent{g}) })
	case ReadyTCP, ReadyHTTP:
		ctx, cancel := context.WithCancel(context.Background())
		g.cancelProbe = cancel
		go func() {
			if probe(ctx, s.probeAddr, s.probeURL, tree) == nil {
				s.post(readyEvent{g})
			}
		}()
	}
}

// notified handles a message on the notify socket: from a generation's
// process only, and only what it may say (see the package
// documentation).
func (s *supervisor) notified(m notifyMsg) {
	g := s.byPID(m.pid)
	if g == nil {
		s.log.Debug("tableflip run: ignoring a notification from a process that is no generation", "pid", m.pid, "message", m.fields)
		return
	}
	_, ready := m.value("READY")
	_, reloading := m.value("RELOADING")
	var relay []string
	switch g.St {
	case starting:
		if v, ok := m.value("EXTEND_TIMEOUT_USEC"); ok {
			relay = append(relay, "EXTEND_TIMEOUT_USEC="+v)
		}
		if v, ok := m.value("STATUS"); ok {
			relay = append(relay, systemd.Status(v))
		}
		if ready && s.opts.Ready.Mode == ReadyNotify {
			s.sdNotify("status", relay...)
			s.ready(g)
			return
		}
	case serving:
		switch {
		case reloading && s.starting == nil:
			// The program reloads by itself.
			relay = append(relay, systemd.Reloading, monotonic())
		case ready && s.starting == nil:
			relay = append(relay, systemd.Ready)
		}
		if v, ok := m.value("STATUS"); ok {
			relay = append(relay, systemd.Status(v))
		}
		if v, ok := m.value("EXTEND_TIMEOUT_USEC"); ok && reloading {
			relay = append(relay, "EXTEND_TIMEOUT_USEC="+v)
		}
	}
	s.sdNotify("relay", relay...)
}

func (s *supervisor) byPID(pid int) *generation {
	for _, g := range s.gens {
		if g.PID == pid {
			return g
		}
	}
	return nil
}

// ready: g serves from now on; the generation that served drains.
func (s *supervisor) ready(g *generation) {
	old := s.serving
	s.stopTimer(g)
	if g.cancelProbe != nil {
		g.cancelProbe()
	}
	g.St, g.ReadyAt = serving, time.Now()
	s.serving, s.starting = g, nil
	s.lastN = g.N
	if old != nil {
		s.retire(old)
	}
	switch {
	case g.why == kindRollback:
		s.current, s.previous = g.rel, nil
	case g.rel != s.current:
		s.previous, s.current = s.current, g.rel
	}
	s.prune()
	took := g.ReadyAt.Sub(g.Started)
	status := systemd.Status(statusText("Serving: generation %d (pid %d)", g.N, g.PID))
	switch g.why {
	case kindFirst:
		s.everServed = true
		if s.opts.PIDFile != "" {
			if err := pidfile.Write(s.opts.PIDFile, s.pid); err != nil {
				s.log.Error("tableflip run: can't write the PID file", "path", s.opts.PIDFile, "error", err)
			}
		}
		s.sdNotify("ready", systemd.Ready, status)
	case kindUpgrade:
		s.succeeded++
		s.streak = 0
		s.sdNotify("ready", systemd.Ready, status)
	default:
		s.sdNotify("status", status)
	}
	// Status tells the new state before the answer goes out.
	s.publish()
	if g.reply != nil {
		g.reply <- upgradeResult{out: tableflip.UpgradeOutcome{PID: g.PID, Generation: g.N, Seconds: took.Seconds()}}
		g.reply = nil
	}
	// The old generation's drain, once the answer is out: the two would
	// compete for the CPU, and the old one serves until it acts on the
	// signal anyway.
	if old != nil {
		s.stopDraining(old)
	}
	// The next zygote, once this generation no longer needs the CPU for
	// its start and the answer is out: they would compete for it.
	s.launcher.prestart()
	// Logged once what it announces (the PID file, systemd, status)
	// is done.
	s.log.Info("tableflip run: generation ready", "generation", g.N, "pid", g.PID, "took", took)
	s.maybeReexec()
}

// drain tells g to stop, and with DrainTimeout bounds how long it may
// take.
func (s *supervisor) drain(g *generation) {
	s.retire(g)
	s.stopDraining(g)
}

// retire makes g a draining generation, the first half of drain.
func (s *supervisor) retire(g *generation) {
	g.St, g.DrainingSince = draining, time.Now()
	if s.serving == g {
		s.serving = nil
	}
	if s.opts.DrainTimeout > 0 {
		s.setTimer(g, s.opts.DrainTimeout)
	}
}

// stopDraining sends a retired g the stop signal, the second half.
func (s *supervisor) stopDraining(g *generation) {
	s.signal(g, s.opts.StopSignal)
	s.log.Info("tableflip run: generation draining", "generation", g.N, "pid", g.PID, "signal", proc.SignalName(s.opts.StopSignal))
}

// deadline: g's timer fired.
func (s *supervisor) deadline(g *generation) {
	switch g.St {
	case starting:
		how := "no READY=1"
		switch s.opts.Ready.Mode {
		case ReadyTCP, ReadyHTTP:
			how = "it did not accept and answer the probe of -ready " + s.opts.Ready.String()
		case ReadyDelay:
			how = "it was not executed"
		}
		s.fail(g, fmt.Errorf("%w: %s within %s (-upgrade-timeout)", tableflip.ErrTimeout, how, s.opts.UpgradeTimeout))
	case failing:
		s.log.Warn("tableflip run: the failed generation did not exit; SIGKILL", "generation", g.N, "pid", g.PID)
		s.signal(g, syscall.SIGKILL)
	case draining, serving:
		s.log.Warn("tableflip run: drain deadline passed; SIGKILL", "generation", g.N, "pid", g.PID, "drain_timeout", s.opts.DrainTimeout)
		s.signal(g, syscall.SIGKILL)
	}
}

// fail stops a generation that failed before it was ready; its exit
// sends the answer.
func (s *supervisor) fail(g *generation, reason error) {
	g.St, g.reason = failing, reason
	if g.cancelProbe != nil {
		g.cancelProbe()
	}
	s.signal(g, s.opts.StopSignal)
	s.setTimer(g, s.killGrace())
}

func (s *supervisor) killGrace() time.Duration { return min(killGrace, s.opts.UpgradeTimeout) }

// exited: g's process has exited and been reaped.
func (s *supervisor) exited(g *generation) {
	s.stopTimer(g)
	if g.cancelProbe != nil {
		g.cancelProbe()
	}
	s.gens = slices.DeleteFunc(s.gens, func(o *generation) bool { return o == g })
	st := g.p.Status()
	switch g.St {
	case starting, failing:
		reason := g.reason
		switch {
		case reason != nil:
		case g.execErr != nil:
			reason = fmt.Errorf("%w: %v", tableflip.ErrChildExited, g.execErr)
		default:
			reason = tableflip.ErrChildExited
		}
		s.starting = nil
		s.failedStart(g.why, &tableflip.ChildError{PID: g.PID, ExitCode: st.ExitCode, Signal: st.Signal, Err: reason}, g.reply)
		g.reply = nil
	case draining:
		s.log.Info("tableflip run: generation exited", "generation", g.N, "pid", g.PID, "status", st.String(),
			"drained_for", time.Since(g.DrainingSince).Round(time.Millisecond))
	case serving:
		s.serving = nil
		if s.stopping {
			break
		}
		s.log.Error("tableflip run: the serving generation died", "generation", g.N, "pid", g.PID, "status", st.String(),
			"served_for", time.Since(g.ReadyAt).Round(time.Millisecond))
		s.sdNotify("status", systemd.Status(statusText("Generation %d (pid %d) died: %s", g.N, g.PID, st)))
		if s.starting == nil {
			s.scheduleReplacement(g)
		}
	}
	s.prune()
}

// failedStart ends a start for why that failed, before or after its
// process was started.
func (s *supervisor) failedStart(why startKind, err error, reply chan upgradeResult) {
	s.log.Error("tableflip run: generation failed before it was ready", "why", kindNames[why], "error", err)
	if why == kindFirst {
		if !s.stopping {
			// Not stopped meanwhile: the program cannot start.
			s.fatal = err
			s.stopAll()
		}
		return
	}
	if why == kindUpgrade {
		s.failed++
		s.lastErr, s.lastErrAt = tableflip.NewControlError(err), time.Now()
	}
	what := "no generation serves"
	if s.serving != nil {
		what = fmt.Sprintf("serving: generation %d (pid %d)", s.serving.N, s.serving.PID)
	}
	if why == kindUpgrade {
		s.sdNotify("upgrade failed", systemd.Ready, systemd.Status(statusText("Upgrade failed; %s: %v", what, err)))
	}
	if reply != nil {
		reply <- upgradeResult{err: err}
	}
	if !s.stopping && s.fatal == nil {
		s.launcher.prestart()
	}
	if s.serving == nil && !s.stopping {
		s.scheduleReplacement(nil)
	}
	s.maybeReexec()
}

// scheduleReplacement arranges for a generation to serve again after
// dead (nil: a replacement that failed) died: the previous release at
// once with Rollback if dead's release died within RollbackGrace, else
// the same release after the backoff.
func (s *supervisor) scheduleReplacement(dead *generation) {
	rollback := dead != nil && s.opts.Rollback && s.previous != nil && dead.rel == s.current &&
		dead.why != kindRollback && time.Since(dead.ReadyAt) < s.opts.RollbackGrace
	if rollback && !s.previous.intact() {
		// Written over in place (same inode): what the descriptor
		// holds is not the previous release any more.
		s.log.Error("tableflip run: can't roll back: the previous release's file was written over in place", "path", s.previous.Path)
		rollback = false
	}
	if rollback {
		s.log.Warn("tableflip run: rolling back to the previous release", "died", dead.rel.Path, "previous", s.previous.Path)
		s.sdNotify("status", systemd.Status(statusText("Rolling back: generation %d died %s after it was ready",
			dead.N, time.Since(dead.ReadyAt).Round(time.Millisecond))))
		if err := s.startGeneration(kindRollback, nil); err != nil {
			s.failedStart(kindRollback, err, nil)
		}
		return
	}
	if dead != nil && time.Since(dead.ReadyAt) >= MaxBackoff {
		s.streak = 0
	}
	delay := min(s.opts.Backoff<<min(s.streak, 30), MaxBackoff)
	if delay < 0 {
		delay = MaxBackoff
	}
	s.streak++
	s.restartSeq++
	seq := s.restartSeq
	s.restart = time.AfterFunc(delay, func() { s.post(restartEvent{seq}) })
	s.log.Warn("tableflip run: replacing the generation", "in", delay, "attempt", s.streak)
}

// replace starts the generation that scheduleReplacement arranged for.
func (s *supervisor) replace() {
	if err := s.startGeneration(kindRestart, nil); err != nil {
		s.failedStart(kindRestart, err, nil)
	}
}

func (s *supervisor) cancelRestart() {
	if s.restart != nil {
		s.restart.Stop()
		s.restart = nil
		s.restartSeq++
	}
}

// stop: the supervisor is to end. Every generation drains (within
// DrainTimeout, then SIGKILL); a starting one is stopped; the loop ends
// once all have exited.
func (s *supervisor) stop(sig os.Signal) {
	if s.stopping {
		s.log.Info("tableflip run: already stopping", "signal", sig.String())
		return
	}
	s.log.Info("tableflip run: stopping", "signal", sig.String())
	s.stopping = true
	s.sdNotify("stopping", systemd.Stopping, systemd.Status("Stopping"))
	s.stopAll()
}

func (s *supervisor) stopAll() {
	s.cancelRestart()
	for _, g := range s.gens {
		switch g.St {
		case starting:
			s.fail(g, tableflip.ErrStopped)
		case serving:
			s.drain(g)
		}
	}
	s.launcher.discard()
}

func (s *supervisor) signal(g *generation, sig syscall.Signal) {
	if err := g.p.Signal(sig); err != nil {
		s.log.Warn("tableflip run: can't signal the generation", "generation", g.N, "pid", g.PID, "signal", proc.SignalName(sig), "error", err)
	}
}

func (s *supervisor) setTimer(g *generation, d time.Duration) {
	s.stopTimer(g)
	g.seq++
	seq := g.seq
	g.Deadline = time.Now().Add(d)
	g.timer = time.AfterFunc(d, func() { s.post(timerEvent{g, seq}) })
}

func (s *supervisor) stopTimer(g *generation) {
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
		g.seq++
		g.Deadline = time.Time{}
	}
}

// prune closes the releases that nothing refers to any more.
func (s *supervisor) prune() {
	s.releases = slices.DeleteFunc(s.releases, func(r *release) bool {
		if r == s.current || r == s.previous || slices.ContainsFunc(s.gens, func(g *generation) bool { return g.rel == r }) {
			return false
		}
		r.close()
		return true
	})
}

func (s *supervisor) sdNotify(what string, states ...string) {
	if s.sd == nil || len(states) == 0 {
		return
	}
	if err := s.sd.Notify(states...); err != nil {
		s.log.Warn("tableflip run: can't notify systemd", "message", what, "error", err)
	}
}

// monotonic is MONOTONIC_USEC= of now, which Type=notify-reload wants
// with RELOADING=1.
func monotonic() string {
	now, err := systemd.Monotonic()
	if err != nil {
		return systemd.Status("")
	}
	return systemd.MonotonicUsec(now)
}

// statusText formats one line for STATUS=.
func statusText(format string, args ...any) string {
	s := strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == 0 {
			return ' '
		}
		return r
	}, fmt.Sprintf(format, args...))
	if len(s) > 1024 {
		s = s[:1024] + "..."
	}
	return s
}
