package tableflip

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/proc"
)

// One upgrade, in the generation that runs it, top to bottom. The run
// loop (upgrader.go) calls upgrade once refusal has let it go ahead;
// child.go is the other side, in the new generation.
//
//  1. upgrade tells the observers, then runs startChild while it refuses
//     other requests and watches for Stop.
//  2. startChild collects what Fds passes on, starts the new process as
//     env.start does (startProcess), and handOver sends it the hello,
//     the descriptors and the state, and waits for its FrameReady.
//  3. acknowledge writes the new generation's pid to its PID file, then
//     sends FrameAck: from then on the new generation serves.
//  4. A failure at any step stops the new process (terminate) and says
//     why (childError); this generation serves on.
//  5. Back in the run loop, a success closes this generation's copies of
//     the sockets and Exit; handedOver starts the drain deadline.

// killGrace is how long a new generation that missed its deadline has
// between SIGTERM and SIGKILL.
const killGrace = 5 * time.Second

// upgrade runs one upgrade, refusing others meanwhile.
func (u *Upgrader) upgrade() error {
	start := time.Now()
	u.log.Info("tableflip: upgrade starting")
	u.tell(observer.upgradeStarting)
	result := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { result <- u.startChild(ctx) }()
	for {
		select {
		case request := <-u.upgradeC:
			request <- ErrUpgradeInProgress
		case <-u.stopC:
			// Refuse further requests while the child is taken down.
			cancel()
			err := <-result
			if err == nil {
				// The child was acknowledged before the stop
				// reached it: it serves now, so this is an
				// upgrade, and no final clean-up must follow.
				u.log.Info("tableflip: upgrade succeeded as Stop was called", "duration", time.Since(start))
			}
			u.tell(func(o observer) { o.upgradeDone(u.successorPID(), err) })
			if err != nil {
				// Leave stopC to the run loop, which closes up.
				return ErrStopped
			}
			return nil
		case err := <-result:
			if err != nil {
				u.log.Error("tableflip: upgrade failed", "error", err, "duration", time.Since(start))
			} else {
				u.log.Info("tableflip: upgrade succeeded", "duration", time.Since(start))
			}
			u.tell(func(o observer) { o.upgradeDone(u.successorPID(), err) })
			if err != nil && u.opts.OnUpgradeFailed != nil {
				u.opts.OnUpgradeFailed(err)
			}
			return err
		}
	}
}

// startChild starts the next generation, hands it what Fds collected and
// waits until it is ready, has failed, or ctx ends.
func (u *Upgrader) startChild(ctx context.Context) error {
	// UpgradeTimeout bounds the upgrade, the state writer included.
	deadline := time.Now().Add(u.opts.UpgradeTimeout)
	p, err := u.Fds.collect(false)
	if err != nil {
		return err
	}
	defer p.close()
	sender, err := u.newStateSender()
	if err != nil {
		return err
	}
	defer func() {
		wait := deadline
		if ctx.Err() != nil {
			// Stop does not wait for the writer.
			wait = time.Now()
		}
		if !sender.close(wait) && ctx.Err() == nil {
			u.log.Error("tableflip: Options.WriteState has not returned by the upgrade's deadline; going on without it",
				"upgrade_timeout", u.opts.UpgradeTimeout)
		}
	}()
	if err := sender.add(p); err != nil {
		return err
	}

	path, err := u.executable()
	if err != nil {
		return err
	}
	conn, childEnd, err := handover.Pair()
	if err != nil {
		return err
	}
	he := handover.Env{Version: handover.Version, PID: os.Getpid(), FD: 3}
	if _, err := rand.Read(he.Token[:]); err != nil {
		conn.Close()
		childEnd.Close()
		return err
	}
	environ := []string{handover.EnvVar + "=" + he.String()}
	for _, kv := range u.env.environ() {
		if !strings.HasPrefix(kv, handover.EnvVar+"=") {
			environ = append(environ, kv)
		}
	}
	child, err := u.env.start(path, u.env.args, environ, u.env.wd, childEnd)
	childEnd.Close()
	if err != nil {
		conn.Close()
		return fmt.Errorf("tableflip: can't start new generation: %w", err)
	}
	pid := child.PID()
	u.log.Info("tableflip: new generation started", "child_pid", pid, "executable", path, "sockets", len(p.fds),
		"sibling", child.Sibling())
	u.tell(func(o observer) { o.childStarted(pid) })

	// ready is the child's FrameReady, set before handshake yields nil.
	var ready handover.Ready
	handshake := make(chan error, 1)
	go func() { handshake <- u.handOver(conn, p, sender, he.Token, pid, &ready) }()

	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	var (
		reason error
		exited bool
	)
	for reason == nil {
		select {
		case err := <-handshake:
			handshake = nil
			if err == nil {
				// A Stop under way wins over a child that got
				// ready at the same moment.
				err = ctx.Err()
			}
			if err == nil {
				err = u.acknowledge(conn, ready)
				if err == nil {
					u.successor = &childLink{conn: conn, pid: pid}
					u.log.Info("tableflip: new generation is ready", "child_pid", pid)
					return nil
				}
			}
			if refused(err) {
				reason = handoverError(err)
			} else if errors.Is(err, errPIDFile) {
				reason = err
			}
			// Otherwise the socket broke, most likely because the
			// child is exiting: its exit status says more.
		case <-child.Done():
			exited = true
			reason = ErrChildExited
			// Its end of the socket is closed now: the handshake
			// ends promptly, with the child's own word if it sent
			// one.
			if handshake != nil {
				if err := <-handshake; refused(err) {
					reason = handoverError(err)
				}
				handshake = nil
			}
		case <-timeout.C:
			reason = ErrTimeout
		case <-ctx.Done():
			reason = ErrStopped
		}
	}
	conn.Close()
	grace := min(killGrace, u.opts.UpgradeTimeout)
	if !exited && (errors.Is(reason, ErrHandover) || errors.Is(reason, errPIDFile)) {
		// A child that refused the handover, or was refused, exits
		// by itself: its own exit status says more than our signal
		// would.
		t := time.NewTimer(grace)
		select {
		case <-child.Done():
			exited = true
		case <-t.C:
		}
		t.Stop()
	}
	if !exited {
		terminate(child, grace)
	}
	if handshake != nil {
		<-handshake
	}
	st := child.Status()
	return &ChildError{PID: pid, ExitCode: st.ExitCode, Signal: st.Signal, Err: reason}
}

// handOver sends the manifest and the descriptors, streams the state,
// and waits for the child's readiness, which it stores in ready.
func (u *Upgrader) handOver(conn *handover.Conn, p *passed, state *stateSender, token [handover.TokenSize]byte, pid int, ready *handover.Ready) error {
	hello := handover.Hello{Version: handover.Version, Token: token, Entries: p.entries, Generation: u.self.Generation,
		Live: u.gens.handover(u.self, u.multiGeneration())}
	payload, err := hello.MarshalBinary()
	if err != nil {
		return err
	}
	if err := conn.WriteFrame(handover.FrameHello, payload); err != nil {
		return err
	}
	if err := conn.SendFDs(p.fds); err != nil {
		return err
	}
	state.start(u.opts.WriteState)
	typ, payload, err := conn.ReadFrame()
	if err != nil {
		if werr := state.failed(); werr != nil {
			return werr
		}
		return err
	}
	if typ != handover.FrameReady {
		return fmt.Errorf("%w: expected ready, got frame %q of %d bytes", handover.ErrMalformed, typ, len(payload))
	}
	if err := ready.UnmarshalBinary(payload); err != nil {
		return err
	}
	if ready.PID != pid {
		return fmt.Errorf("%w: ready from pid %d, expected %d", handover.ErrMalformed, ready.PID, pid)
	}
	// The child read the state to its end before it said ready.
	return state.wait()
}

// acknowledge makes the child the serving generation: it names the child
// in the PID file that the child asked for, then tells the child. So the
// PID file names the new generation before this process can exit, and
// before Upgrade returns or systemd is told. If the child is gone before
// it learns it, the PID file names this process again.
func (u *Upgrader) acknowledge(conn *handover.Conn, ready handover.Ready) error {
	path := ready.PIDFile
	if err := writePIDFile(path, ready.PID); err != nil {
		_ = conn.WriteFrame(handover.FrameError, []byte(err.Error()))
		return err
	}
	if err := conn.WriteFrame(handover.FrameAck, nil); err != nil {
		if werr := writePIDFile(path, os.Getpid()); werr != nil {
			u.log.Error("tableflip: can't name this process in the PID file again", "error", werr)
		}
		return err
	}
	if own := pidPath(u.opts.PIDFile, u.env.wd); own != "" && own != path {
		// The new generation keeps its PID file elsewhere.
		removePIDFile(u.opts.PIDFile, u.env.wd)
	}
	return nil
}

// refused reports whether err is the child's refusal or a breach of the
// protocol, rather than a broken socket.
func refused(err error) bool {
	return errors.As(err, new(*handover.PeerError)) || errors.Is(err, handover.ErrMalformed) ||
		errors.Is(err, errStateWriter)
}

func handoverError(err error) error {
	var pe *handover.PeerError
	if errors.As(err, &pe) {
		return fmt.Errorf("%w: new generation refused it: %s", ErrHandover, pe.Message)
	}
	return fmt.Errorf("%w: %w", ErrHandover, err)
}

// terminate stops a child that is still running: SIGTERM, then SIGKILL
// after grace. It returns once the child has exited.
func terminate(p process, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.Done():
	case <-t.C:
		_ = p.Signal(syscall.SIGKILL)
		<-p.Done()
	}
}

// childLink is the acknowledged new generation, kept for as long as this
// process lives.
type childLink struct {
	conn *handover.Conn
	pid  int
}

// successorPID is the pid of the generation the last successful upgrade
// handed over to, or 0. Only the run loop calls it.
func (u *Upgrader) successorPID() int {
	if u.successor == nil {
		return 0
	}
	return u.successor.pid
}

// handedOver is called by the run loop once an upgrade succeeded: this
// generation drains from now on, and with DrainTimeout its deadline runs.
func (u *Upgrader) handedOver() {
	u.gens.handedOver(time.Now())
	u.serveConnCount()
	if d := u.opts.DrainTimeout; d > 0 {
		go u.enforceDrainDeadline(d)
	}
}

// enforceDrainDeadline makes this process exit d from now: SIGTERM, so
// that the program's own graceful path runs, then SIGKILL after a grace.
// Signals rather than os.Exit: the program decides what SIGTERM means,
// and SIGKILL is the one thing it cannot ignore or block.
func (u *Upgrader) enforceDrainDeadline(d time.Duration) {
	time.Sleep(d)
	grace := min(killGrace, d)
	u.gens.deadlineHit()
	u.log.Warn("tableflip: drain deadline passed; sending SIGTERM to this generation",
		"drain_timeout", d, "grace", grace)
	self, _ := os.FindProcess(os.Getpid())
	_ = self.Signal(syscall.SIGTERM)
	time.Sleep(grace)
	u.log.Error("tableflip: still draining after the grace; sending SIGKILL to this generation", "grace", grace)
	_ = self.Signal(syscall.SIGKILL)
}

// process is the new generation's process as an upgrade sees it:
// *proc.Process, or a test's stand-in.
type process interface {
	PID() int
	// Sibling reports a process started as a child of this process's
	// parent (see Upgrade).
	Sibling() bool
	// Done is closed once the process has exited and Status is known.
	Done() <-chan struct{}
	Status() proc.Status
	Signal(syscall.Signal) error
}

// startProcess starts the program with the standard streams and the
// handover socket as descriptor 3, as a sibling of this process when its
// parent is a service manager (see Upgrade and proc.ParentReaps). It hands
// raw descriptors to the kernel rather than going through os.File.Fd,
// which would put shared descriptions into blocking mode.
func startProcess(path string, args, environ []string, dir string, handoverEnd *os.File) (process, error) {
	files := []uintptr{0, 1, 2, 0}
	for fd := range 3 {
		if !proc.Open(fd) {
			files[fd] = ^uintptr(0) // closed here, closed there
		}
	}
	rc, err := handoverEnd.SyscallConn()
	if err != nil {
		return nil, err
	}
	var p *proc.Process
	var startErr error
	err = rc.Control(func(fd uintptr) {
		files[3] = fd
		p, startErr = proc.Start(path, args, environ, dir, files, proc.ParentReaps())
	})
	if err != nil {
		return nil, err
	}
	if startErr != nil {
		return nil, startErr
	}
	return p, nil
}

// executable finds the program to start: the name it was started by,
// taken from the directory it started in, so that a deploy which replaces
// the file or a symlink to it starts the new version.
func (u *Upgrader) executable() (string, error) {
	if len(u.env.args) == 0 {
		return "", errors.New("tableflip: can't tell the executable: no os.Args")
	}
	name := u.env.args[0]
	if !strings.Contains(name, "/") {
		path, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("tableflip: can't find executable: %w", err)
		}
		name = path
	}
	if !filepath.IsAbs(name) {
		name = filepath.Join(u.env.wd, name)
	}
	info, err := os.Stat(name)
	switch {
	case errors.Is(err, os.ErrNotExist):
		hint := ""
		if strings.Contains(name, "go-build") {
			hint = " (a binary built by go run is deleted when go run ends; use go build)"
		}
		return "", fmt.Errorf("tableflip: executable %s no longer exists%s: %w", name, hint, err)
	case err != nil:
		return "", fmt.Errorf("tableflip: executable: %w", err)
	case !info.Mode().IsRegular() || info.Mode()&0o111 == 0:
		return "", fmt.Errorf("tableflip: %s is not an executable file (mode %s): %w", name, info.Mode(), os.ErrPermission)
	}
	return name, nil
}
