//go:build unix

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
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/proc"
	"golang.org/x/sys/unix"
)

// This file is the running generation's side of the handover: it starts
// the next one.

// childLink is kept open for as long as this process lives.
type childLink struct {
	conn *handover.Conn
	pid  int
}

// startChild starts the next generation, hands it what Fds collected and
// waits until it is ready, has failed, or ctx ends.
func (u *Upgrader) startChild(ctx context.Context) error {
	// UpgradeTimeout bounds the upgrade, the state writer included.
	deadline := time.Now().Add(u.opts.UpgradeTimeout)
	p, err := u.Fds.collect()
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
	proc, err := startProcess(path, u.env.args, environ, u.env.wd, childEnd, u.env.parentReaps())
	childEnd.Close()
	if err != nil {
		conn.Close()
		return fmt.Errorf("tableflip: can't start new generation: %w", err)
	}
	u.log.Info("tableflip: new generation started", "pid", proc.PID, "executable", path, "sockets", len(p.fds),
		"sibling", proc.Sibling)
	u.sdChildStarted(proc.PID)

	// ready is the child's FrameReady, set before handshake yields nil.
	var ready handover.Ready
	handshake := make(chan error, 1)
	go func() { handshake <- u.handOver(conn, p, sender, he.Token, proc.PID, &ready) }()

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
					u.children = append(u.children, &childLink{conn: conn, pid: proc.PID})
					u.log.Info("tableflip: new generation is ready", "pid", proc.PID)
					u.sdChildReady(proc.PID)
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
		case <-proc.Done():
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
		case <-proc.Done():
			exited = true
		case <-t.C:
		}
		t.Stop()
	}
	if !exited {
		terminate(proc, grace)
	}
	if handshake != nil {
		<-handshake
	}
	return childError(proc.PID, proc.Status(), reason)
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
		if path != "" {
			if werr := writePIDFile(path, os.Getpid()); werr != nil {
				u.log.Error("tableflip: can't name this process in the PID file again", "error", werr)
			}
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

// handOver sends the manifest and the descriptors, streams the state,
// and waits for the child's readiness.
func (u *Upgrader) handOver(conn *handover.Conn, p *passed, state *stateSender, token [handover.TokenSize]byte, pid int, ready *handover.Ready) error {
	hello := handover.Hello{Version: handover.Version, Token: token, Entries: p.entries, Generation: u.stats.generation,
		Live: u.handoverGenerations()}
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

// terminate stops a child that is still running: SIGTERM, then SIGKILL
// after grace. It returns once the child has exited.
func terminate(p *proc.Process, grace time.Duration) {
	_ = p.Signal(unix.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.Done():
	case <-t.C:
		_ = p.Signal(unix.SIGKILL)
		<-p.Done()
	}
}

func childError(pid int, st proc.Status, reason error) *ChildError {
	return &ChildError{PID: pid, ExitCode: st.ExitCode, Signal: st.Signal, Err: reason}
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

// startProcess starts the program with the standard streams and the
// handover socket as descriptor 3, as a sibling of this process if
// sibling is set (see proc.Start). It hands raw descriptors to the kernel
// rather than going through os.File.Fd, which would put shared
// descriptions into blocking mode.
func startProcess(path string, args, environ []string, dir string, handoverEnd *os.File, sibling bool) (*proc.Process, error) {
	files := []uintptr{0, 1, 2, 0}
	for fd := range 3 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
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
		p, startErr = proc.Start(path, args, environ, dir, files, sibling)
	})
	if err != nil {
		return nil, err
	}
	return p, startErr
}
