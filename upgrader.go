package tableflip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/proc"
)

// DefaultUpgradeTimeout is the duration before the Upgrader kills the new
// process if no readiness notification was received.
const DefaultUpgradeTimeout time.Duration = time.Minute

// Options control the behaviour of the Upgrader. The zero value is usable.
type Options struct {
	// UpgradeTimeout is how long the new generation has to call Ready.
	// A new generation that misses it is sent SIGTERM, then SIGKILL
	// after a short grace, and reaped. Zero means DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// PIDFile, if not empty, is written with the pid of the generation
	// that serves: by the first at Ready, and by each new one once its
	// parent has acknowledged it. It is replaced atomically and removed
	// by a final Stop. A relative path is taken from the working
	// directory the program started in.
	PIDFile string
	// ListenConfig is used to create new sockets. Its Control hook, if
	// any, runs for sockets created here, not for inherited ones.
	ListenConfig *net.ListenConfig
	// Logger receives a record of each upgrade: its start, the new
	// generation's pid, readiness, failure and its reason, and the
	// parent's exit. Nil means silent.
	Logger *slog.Logger
	// Systemd, if not nil, tells systemd about readiness, upgrades and
	// the final stop, takes the sockets systemd passes (socket
	// activation), and can keep them in systemd's fd store: see
	// SystemdOptions. Nil means that nothing systemd-related happens.
	Systemd *SystemdOptions
	// ControlSocket, if not empty, is the path of a Unix socket on which
	// the live generation answers "upgrade" and "status" requests (see
	// ControlRequest; "tableflip upgrade" and "tableflip status" are its
	// clients). The socket is passed on through every upgrade and
	// removed by a final Stop. A socket file that nobody serves is
	// replaced; anything else at the path makes New fail.
	ControlSocket string
	// ControlSocketGroup, if not empty, is a group name or gid given
	// access to ControlSocket: the file gets that group and mode 0660,
	// and its members are served. Empty means mode 0600: only this
	// process's uid and root are served.
	ControlSocketGroup string
	// WriteState, if not nil, hands application state on: during each
	// upgrade it streams state to the new generation, which reads it
	// with State before Ready, while the new generation initialises.
	// The library carries bytes; the program owns the format (give it a
	// version). An error fails the upgrade: the new generation is
	// stopped and this one keeps serving. UpgradeTimeout bounds the
	// writer too: the upgrade fails when it passes, and a writer that
	// blocks on anything but its writes (which fail once the upgrade
	// has ended) is left running; the next upgrade does not wait for
	// it. With Systemd.FdStore set, a
	// final Stop also writes the state, into a memfd in systemd's fd
	// store that the next start reads with State after a `systemctl
	// restart` (Linux only; systemd releases the store on a `systemctl
	// stop`); a crash writes nothing, so the next start gets ErrNoState,
	// or the last stored state if no start has consumed it yet: see
	// SystemdOptions.
	WriteState func(w io.Writer) error
	// OnUpgradeFailed, if not nil, is called in this generation when an
	// upgrade that started a new generation fails, with the reason, so
	// that the program can undo what it did for the handover. It runs
	// after WriteState has returned (or, for a writer still blocked at
	// UpgradeTimeout, without waiting for it), on the goroutine that
	// owns upgrades: it must not call Upgrade, which would wait for it.
	OnUpgradeFailed func(err error)
	// MaxGenerations caps how many generations of the program may be
	// alive at once, this one and the new one included. 0 or 1 keeps
	// the compatible behaviour: an upgrade is refused with
	// ErrParentRunning until the parent has exited. N > 1 lets a ready
	// generation upgrade while older ones still drain; an upgrade that
	// would make more than N alive is refused with
	// ErrTooManyGenerations and starts nothing; ask again once an older
	// generation has exited.
	MaxGenerations int
	// UpgradeSignal, if not nil, is the signal on which this process
	// upgrades, as if it called Upgrade; the outcome is logged
	// (Logger) and counted in Stats. New installs the handler before it
	// returns, and keeps it for the life of the process, so that from
	// New on the signal never kills the process: not a new generation
	// that has just been announced as the serving one (PID file,
	// MAINPID=), nor an old one that is draining (the signal is then
	// refused with ErrUpgraded and logged). A program that handles the
	// upgrade signal itself must call signal.Notify before New for the
	// same reason; the library cannot tell when its goroutine has run.
	UpgradeSignal os.Signal
	// DrainTimeout, if positive, bounds how long this generation drains
	// after an upgrade succeeded: then the library sends it SIGTERM, and
	// SIGKILL after a grace of min(5s, DrainTimeout), whatever the
	// program does. Zero means no deadline.
	DrainTimeout time.Duration
}

// Upgrader handles zero downtime upgrades and passing files between
// processes.
type Upgrader struct {
	*Fds

	opts   Options
	log    *slog.Logger
	env    *osEnv
	parent *parentLink // nil in a first generation
	self   GenerationInfo
	stats  upgradeStats
	gens   generations
	sd     *sdState // nil without Options.Systemd
	ctl    *controlServer
	// observers are told of each step of the state machine.
	observers []observer

	readyOnce sync.Once
	readyErr  error
	readyReqC chan chan<- error
	readyC    chan struct{}
	stopOnce  sync.Once
	stopC     chan struct{}
	upgradeC  chan chan<- error
	exitC     chan struct{}

	// successor is the new generation that the last upgrade handed
	// over to. Its handover socket stays open until this process exits:
	// its end of file tells the successor that this one is gone.
	successor *childLink
}

// observer is told of each step of the state machine by the goroutine
// that runs it (see run). Stats and systemd are observers; they watch the
// upgrade without reaching into it, and none of them may block.
type observer interface {
	// ready: this generation's Ready succeeded.
	ready()
	// refused: an upgrade was refused before it started anything.
	refused(err error)
	// upgradeStarting: an upgrade begins.
	upgradeStarting()
	// childStarted: the new generation's process exists.
	childStarted(pid int)
	// upgradeDone: the upgrade ended; with err nil, the new generation
	// pid serves from now on.
	upgradeDone(pid int, err error)
	// stopping: a final Stop has cleaned up.
	stopping()
}

var (
	// One process has one environment and one set of descriptors, so it
	// has one Upgrader.
	stdMu       sync.Mutex
	stdUpgrader *Upgrader
)

// New creates a new Upgrader. Files are passed from the parent and may be
// empty.
//
// Only the first call to this function will succeed. On platforms that
// cannot upgrade (see ErrNotSupported) it succeeds too, and returns an
// Upgrader that creates fresh sockets and whose Upgrade returns
// ErrNotSupported.
func New(opts Options) (*Upgrader, error) {
	stdMu.Lock()
	defer stdMu.Unlock()

	if stdUpgrader != nil {
		return nil, errors.New("tableflip: only a single Upgrader allowed")
	}
	upg, err := newUpgrader(stdEnv, opts)
	if err != nil {
		return nil, err
	}
	stdUpgrader = upg
	return upg, nil
}

func newUpgrader(env *osEnv, opts Options) (*Upgrader, error) {
	var upgradeSignal chan os.Signal
	if opts.UpgradeSignal != nil {
		// First of all: from here on the signal cannot kill.
		upgradeSignal = make(chan os.Signal, 1)
		signal.Notify(upgradeSignal, opts.UpgradeSignal)
	}
	if opts.UpgradeTimeout <= 0 {
		opts.UpgradeTimeout = DefaultUpgradeTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slogDiscard
	}
	parent, inherited, err := inherit(env, log)
	if err != nil {
		if upgradeSignal != nil {
			signal.Stop(upgradeSignal)
		}
		return nil, err
	}
	u := &Upgrader{
		Fds:       newFds(inherited, opts.ListenConfig, log),
		opts:      opts,
		log:       log,
		env:       env,
		parent:    parent,
		self:      GenerationInfo{PID: os.Getpid(), Generation: 1, Started: time.Now()},
		readyC:    make(chan struct{}),
		readyReqC: make(chan chan<- error),
		stopC:     make(chan struct{}),
		upgradeC:  make(chan chan<- error),
		exitC:     make(chan struct{}),
	}
	if parent != nil {
		u.self.Generation = parent.generation + 1
		u.self.ParentPID = parent.pid
		log.Info("tableflip: inherited from parent", "parent_pid", parent.pid, "sockets", len(inherited))
	}
	u.stats.generation = u.self.Generation
	u.gens.init(parent)
	u.observers = append(u.observers, &u.stats)
	// systemd first: a control socket kept in the fd store comes back
	// through socket activation.
	if sd := newSystemd(u); sd != nil {
		u.sd = sd
		u.observers = append(u.observers, sd)
	}
	if err := u.initControl(); err != nil {
		u.abandon(err)
		if upgradeSignal != nil {
			signal.Stop(upgradeSignal)
		}
		return nil, err
	}
	go u.run()
	if upgradeSignal != nil {
		go u.upgradeOnSignal(upgradeSignal)
	}
	return u, nil
}

// abandon closes what New took when it fails after taking it, leaving
// socket files alone (a parent may serve on them), and tells the parent.
func (u *Upgrader) abandon(err error) {
	u.Fds.closeInherited()
	if u.parent != nil {
		u.parent.refuse(err)
	}
}

// upgradeOnSignal upgrades on each signal that arrives on sig, for the
// life of the process. The signals that arrive during an upgrade are
// merged into one: that one is refused as in progress, or starts the next
// upgrade if it comes after.
func (u *Upgrader) upgradeOnSignal(sig <-chan os.Signal) {
	for s := range sig {
		u.log.Info("tableflip: upgrade requested by signal", "signal", s.String())
		// The run loop logs a refusal or a failure.
		if err := u.Upgrade(); errors.Is(err, ErrUpgraded) || errors.Is(err, ErrStopped) {
			u.log.Info("tableflip: upgrade signal ignored", "reason", err)
		}
	}
}

// Ready signals that the current process is ready to accept connections.
// It must be called to finish the upgrade.
//
// Ready closes inherited sockets and files that were not asked for. A
// first generation then writes the PID file. A new generation tells its
// parent, which writes the new generation's pid to the PID file and
// acknowledges; an error before the acknowledgement leaves the parent
// serving and the PID file naming it. If the parent exits before it
// acknowledges, Ready returns an error wrapping ErrParentExited.
//
// Until Ready has succeeded, the listeners that a new generation inherited
// do not accept: connections wait in the kernel's queue, which the parent
// serves meanwhile, so a new generation that dies while it initialises
// loses none of them. (They accept, too, once Ready has failed with
// ErrParentExited: nobody else is left to.)
//
// Ready after Stop returns ErrStopped and takes nothing over. Calling
// Ready again returns the first call's result.
func (u *Upgrader) Ready() error {
	u.readyOnce.Do(func() {
		reply := make(chan error, 1)
		select {
		case u.readyReqC <- reply:
			u.readyErr = <-reply
		case <-u.exitC:
			// Stopped: with no Ready, there was no upgrade.
			u.readyErr = ErrStopped
		}
	})
	return u.readyErr
}

// Exit returns a channel that is closed when the process should exit: after
// a successful upgrade, or after Stop.
func (u *Upgrader) Exit() <-chan struct{} {
	return u.exitC
}

// Stop prevents any more upgrades from happening, and closes the exit
// channel.
//
// If Stop is called before an upgrade has succeeded, the process is taken
// to be shutting down for good: the Unix socket files of its listeners are
// removed, and so is the PID file if it names this process. A new
// generation stopped before its Ready leaves them to its parent, which
// serves on.
func (u *Upgrader) Stop() {
	u.stopOnce.Do(func() {
		close(u.stopC)
	})
}

// WaitForParent blocks until the parent has exited. It returns nil at
// once if there is no parent, an error wrapping ErrParentExited if the
// parent exited before it acknowledged this process, one wrapping
// ErrHandover at once if the parent refused it (it could not write the PID
// file), and ctx.Err() if ctx ends first.
func (u *Upgrader) WaitForParent(ctx context.Context) error {
	if u.parent == nil {
		return nil
	}
	select {
	case <-u.parent.exited:
		return u.parent.exitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// HasParent checks if the current process is an upgrade or the first
// invocation.
func (u *Upgrader) HasParent() bool {
	return u.parent != nil
}

// Upgrade triggers an upgrade: it starts a new generation of the program,
// hands it the sockets and files, and waits until it is ready or has
// failed. It returns nil once the new generation is ready; then Exit is
// closed and this process should stop serving.
//
// By the time Upgrade returns nil, the PID file (Options.PIDFile, or the
// new generation's own if its program names another) names the new
// generation, and systemd has been told (Options.Systemd).
//
// Errors can be told apart with errors.Is: ErrNotReady, ErrUpgradeInProgress,
// ErrParentRunning, ErrTooManyGenerations, ErrStopped and ErrUpgraded
// refuse the upgrade without starting anything; a *ChildError reports a
// new generation that failed, and ErrNotSupported a platform without
// upgrades. Whatever the error, this process keeps serving.
//
// On Linux, when this process's parent is a service manager (pid 1 of its
// pid namespace, or the systemd user manager named by $MANAGERPID), the
// new generation is started as a child of that parent rather than of this
// process (clone with CLONE_PARENT). So systemd supervises every
// generation as it does the first: when the main PID moves to the new
// generation, systemd watches it as its own child, and a stop waits for it
// to drain rather than going straight to SIGKILL (systemd does not wait
// for a main process that is not its child). docs/faults.md says what
// that choice was measured against.
func (u *Upgrader) Upgrade() error {
	return u.requestUpgrade(u.exitC)
}

// requestUpgrade asks the run loop for an upgrade, unless leaving is closed
// first: then this generation is on its way out.
func (u *Upgrader) requestUpgrade(leaving <-chan struct{}) error {
	if !handover.Supported {
		return ErrNotSupported
	}
	response := make(chan error, 1)
	select {
	case <-u.stopC:
		return ErrStopped
	case <-leaving:
		// Stop leads here too: tell the two apart.
		if closed(u.stopC) {
			return ErrStopped
		}
		return ErrUpgraded
	case u.upgradeC <- response:
	}
	return <-response
}

// run owns the state machine: Ready, Stop and upgrades are requests to
// it, answered one at a time, so that each sees the outcome of the one
// before. A generation is, in turn: not ready (its parent, if it has one,
// serves); serving (Ready succeeded, or failed with ErrParentExited); and
// gone (Stop, or a successful upgrade), when Exit closes.
func (u *Upgrader) run() {
	defer close(u.exitC)
	defer u.stopControl()

	var (
		parentExited <-chan struct{}
		serving      bool
	)
	if u.parent != nil {
		parentExited = u.parent.exited
	}
	for {
		select {
		case <-parentExited:
			u.parentGone(&parentExited)

		case reply := <-u.readyReqC:
			if closed(u.stopC) {
				// Stop came first: take nothing over. The stop
				// case closes up.
				reply <- ErrStopped
				continue
			}
			err := u.ready()
			if err == nil || errors.Is(err, ErrParentExited) {
				// This generation serves from now on: its
				// listeners accept, and a Stop is final. With
				// ErrParentExited nobody else is left to.
				u.Fds.openGate()
				serving = true
			}
			if err == nil {
				close(u.readyC)
				u.tell(observer.ready)
			}
			reply <- err

		case <-u.stopC:
			// A new generation that is not serving leaves the socket
			// files to its parent, which serves on them, and tells it
			// at once. (After a successful upgrade this loop has
			// returned: Stop then only closes Exit, which is closed.)
			final := u.parent == nil || serving
			if !final {
				u.parent.refuse(ErrStopped)
			}
			u.Fds.closeUsed(final)
			removePIDFile(u.opts.PIDFile, u.env.wd)
			u.tell(observer.stopping)
			return

		case request := <-u.upgradeC:
			if err := u.refusal(closed(u.readyC), &parentExited); err != nil {
				u.log.Warn("tableflip: upgrade refused", "reason", err)
				u.tell(func(o observer) { o.refused(err) })
				request <- err
				continue
			}
			err := u.upgrade()
			request <- err
			if err == nil {
				u.Fds.closeUsed(false)
				u.handedOver()
				return
			}
		}
	}
}

// tell calls f on every observer.
func (u *Upgrader) tell(f func(observer)) {
	for _, o := range u.observers {
		f(o)
	}
}

// ready makes this generation the serving one. The run loop calls it.
func (u *Upgrader) ready() error {
	stale := u.Fds.closeInherited()
	pidFile := pidPath(u.opts.PIDFile, u.env.wd)
	if u.parent == nil {
		if err := writePIDFile(pidFile, os.Getpid()); err != nil {
			return err
		}
		u.log.Info("tableflip: ready", "generation", u.self.Generation)
	} else {
		// The parent writes the PID file, before it acknowledges.
		grace := min(killGrace, u.opts.UpgradeTimeout)
		if err := u.parent.ready(pidFile, u.stopC, grace); err != nil {
			return err
		}
		u.log.Info("tableflip: ready; parent acknowledged", "generation", u.self.Generation, "parent_pid", u.parent.pid)
	}
	// Only now that the parent stops serving is nobody left on the
	// sockets this generation did not ask for: a stale socket file would
	// only make clients wait for nothing.
	for _, path := range stale {
		unlinkUnixSocket(path)
	}
	return nil
}

// refusal says why an upgrade asked for now is refused, or nil if it may
// go ahead: the one place that decides. Only the run loop calls it; it
// clears *parentExited if it finds that the parent has exited.
func (u *Upgrader) refusal(ready bool, parentExited *<-chan struct{}) error {
	switch {
	case !ready:
		return ErrNotReady
	case *parentExited != nil && !u.multiGeneration():
		// WaitForParent may have seen the exit before the run loop
		// did, and the parent may have exited a moment before its end
		// of file arrived: an upgrade asked for after the parent is
		// gone is never refused.
		select {
		case <-*parentExited:
		default:
			if !proc.Gone(u.parent.pid) {
				return fmt.Errorf("%w (pid %d is draining; Options.MaxGenerations above 1 lets a new upgrade start meanwhile, and Options.DrainTimeout bounds the drain)",
					ErrParentRunning, u.parent.pid)
			}
		}
		u.parentGone(parentExited)
	case u.multiGeneration():
		if older := u.gens.live(); len(older)+2 > u.opts.MaxGenerations {
			pids := make([]string, len(older))
			for i, g := range older {
				pids[i] = fmt.Sprint(g.PID)
			}
			return fmt.Errorf("%w: %d alive (this one and %d draining: pid %s), and a new one would exceed Options.MaxGenerations (%d); ask again once one has exited (Options.DrainTimeout bounds how long that takes)",
				ErrTooManyGenerations, len(older)+1, len(older), strings.Join(pids, ", "), u.opts.MaxGenerations)
		}
	}
	return nil
}

// parentGone records, in the run loop, that the parent has exited.
func (u *Upgrader) parentGone(parentExited *<-chan struct{}) {
	*parentExited = nil
	u.log.Info("tableflip: parent exited", "parent_pid", u.parent.pid)
}

// multiGeneration reports whether upgrades may overlap older
// generations' drains.
func (u *Upgrader) multiGeneration() bool {
	return u.opts.MaxGenerations > 1
}

// osEnv is how the Upgrader reaches the process's environment, so that
// tests can replace it.
type osEnv struct {
	lookupEnv func(string) (string, bool)
	unsetenv  func(string) error
	environ   func() []string
	getppid   func() int
	// start starts the new generation's process, with handoverEnd as
	// its descriptor 3 (see startProcess): the seam where tests put a
	// generation of their own.
	start func(path string, args, env []string, dir string, handoverEnd *os.File) (process, error)
	// args are the program's arguments, as it was started.
	args []string
	// wd is the working directory the program started in.
	wd string
}

var stdEnv = func() *osEnv {
	wd, _ := os.Getwd()
	return &osEnv{
		lookupEnv: os.LookupEnv,
		unsetenv:  os.Unsetenv,
		environ:   os.Environ,
		getppid:   os.Getppid,
		start:     startProcess,
		args:      os.Args,
		wd:        wd,
	}
}()

// slogDiscard is the logger used when Options.Logger is nil.
var slogDiscard = slog.New(discard{})

type discard struct{}

func (discard) Enabled(context.Context, slog.Level) bool  { return false }
func (discard) Handle(context.Context, slog.Record) error { return nil }
func (d discard) WithAttrs([]slog.Attr) slog.Handler      { return d }
func (d discard) WithGroup(string) slog.Handler           { return d }
