//go:build unix

package tableflip

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
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
	p, err := u.Fds.collect()
	if err != nil {
		return err
	}
	defer p.close()
	sender, err := u.newStateSender()
	if err != nil {
		return err
	}
	defer sender.close()
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
	proc, err := startProcess(path, u.env.args, environ, u.env.wd, childEnd)
	childEnd.Close()
	if err != nil {
		conn.Close()
		return fmt.Errorf("tableflip: can't start new generation: %w", err)
	}
	u.log.Info("tableflip: new generation started", "pid", proc.Pid, "executable", path, "sockets", len(p.fds))
	u.sdChildStarted(proc.Pid)

	exited := make(chan *os.ProcessState, 1)
	go func() {
		state, _ := proc.Wait()
		exited <- state
	}()
	handshake := make(chan error, 1)
	go func() { handshake <- u.handOver(conn, p, sender, he.Token, proc.Pid) }()

	timeout := time.NewTimer(u.opts.UpgradeTimeout)
	defer timeout.Stop()
	var (
		reason error
		state  *os.ProcessState
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
				err = conn.WriteFrame(handover.FrameAck, nil)
				if err == nil {
					u.children = append(u.children, &childLink{conn: conn, pid: proc.Pid})
					u.log.Info("tableflip: new generation is ready", "pid", proc.Pid)
					u.sdChildReady(proc.Pid)
					return nil
				}
			}
			if refused(err) {
				reason = handoverError(err)
			}
			// Otherwise the socket broke, most likely because the
			// child is exiting: its exit status says more.
		case state = <-exited:
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
	if state == nil && errors.Is(reason, ErrHandover) {
		// A child that refused the handover exits by itself: its own
		// exit status says more than our signal would.
		t := time.NewTimer(grace)
		select {
		case state = <-exited:
		case <-t.C:
		}
		t.Stop()
	}
	if state == nil {
		state = terminate(proc, exited, grace)
	}
	if handshake != nil {
		<-handshake
	}
	return childError(proc.Pid, state, reason)
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
func (u *Upgrader) handOver(conn *handover.Conn, p *passed, state *stateSender, token [handover.TokenSize]byte, pid int) error {
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
	if typ != handover.FrameReady || len(payload) != 4 {
		return fmt.Errorf("%w: expected ready, got frame %q of %d bytes", handover.ErrMalformed, typ, len(payload))
	}
	if got := int(binary.BigEndian.Uint32(payload)); got != pid {
		return fmt.Errorf("%w: ready from pid %d, expected %d", handover.ErrMalformed, got, pid)
	}
	// The child read the state to its end before it said ready.
	return state.wait()
}

// terminate stops a child that is still running: SIGTERM, then SIGKILL
// after grace. It returns once the child is reaped.
func terminate(proc *os.Process, exited <-chan *os.ProcessState, grace time.Duration) *os.ProcessState {
	_ = proc.Signal(unix.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case state := <-exited:
		return state
	case <-t.C:
		_ = proc.Kill()
		return <-exited
	}
}

func childError(pid int, state *os.ProcessState, reason error) *ChildError {
	e := &ChildError{PID: pid, ExitCode: -1, Err: reason}
	if state == nil {
		return e
	}
	e.ExitCode = state.ExitCode()
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Signal = ws.Signal()
	}
	return e
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
// handover socket. It hands raw descriptors to the kernel rather than
// going through os.File.Fd, which would put shared descriptions into
// blocking mode.
func startProcess(path string, args, environ []string, dir string, handoverEnd *os.File) (*os.Process, error) {
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
	var pid int
	var startErr error
	err = rc.Control(func(fd uintptr) {
		files[3] = fd
		attr := &syscall.ProcAttr{Dir: dir, Env: environ, Files: files}
		pid, startErr = syscall.ForkExec(path, args, attr)
	})
	if err != nil {
		return nil, err
	}
	if startErr != nil {
		return nil, &os.PathError{Op: "fork/exec", Path: path, Err: startErr}
	}
	return os.FindProcess(pid)
}
