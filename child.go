package tableflip

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
)

// The new generation's side of the handover (upgrade.go is the other):
// inherit, in New, reads what the parent passed on; ready, when the
// program calls Ready, tells the parent and waits for its
// acknowledgement; watch learns when the parent exits.

// parentLink is the new generation's connection to the process that
// started it.
type parentLink struct {
	conn *handover.Conn
	pid  int
	// ack is closed when the parent acknowledges readiness.
	ack chan struct{}
	// exited is closed when the parent has exited; exitErr says whether
	// it did so before acknowledging.
	exited  chan struct{}
	exitErr error
	// generation is the parent's generation number (0 from a parent
	// that predates it).
	generation uint64
	// live are the generations alive when the parent sent its hello,
	// itself included; empty from a parent that runs one at a time.
	live []handover.LiveGeneration
	// ackAt is when the acknowledgement came; set before ack closes.
	ackAt time.Time
	// state is the state stream, if the parent hands state on.
	state *stateStream
}

// inherit reads what the parent passed on, if this process was started by
// an upgrade. A handover variable that does not come from this process's
// parent is removed and ignored, never obeyed.
func inherit(env *osEnv, log *slog.Logger) (*parentLink, []*entry, error) {
	value, ok := env.lookupEnv(handover.EnvVar)
	if !ok {
		return nil, nil, nil
	}
	// Whatever comes next, no subprocess of this program sees it.
	env.unsetenv(handover.EnvVar)

	he, err := handover.ParseEnv(value)
	if err != nil && !errors.Is(err, handover.ErrVersion) {
		log.Warn("tableflip: ignoring malformed handover variable", "error", err)
		return nil, nil, nil
	}
	if he.FD < 3 {
		log.Warn("tableflip: ignoring handover variable that names a standard stream", "fd", he.FD)
		return nil, nil, nil
	}
	// The parent's pid, or on Linux the creator of the socket (which
	// still names the parent if it has since died), must match.
	ppid := env.getppid()
	if ppid != he.PID && handover.PeerPID(he.FD) != he.PID {
		log.Warn("tableflip: ignoring handover variable that names another parent",
			"named_pid", he.PID, "parent_pid", ppid)
		return nil, nil, nil
	}
	conn, cerr := handover.NewConn(he.FD)
	if cerr != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrHandover, cerr)
	}
	if err != nil {
		return nil, nil, refuse(conn, err)
	}

	typ, payload, err := conn.ReadFrame()
	if errors.Is(err, io.EOF) {
		conn.Close()
		return nil, nil, fmt.Errorf("%w (pid %d) before sending what to inherit", ErrParentExited, he.PID)
	}
	if err != nil {
		return nil, nil, refuse(conn, err)
	}
	if typ != handover.FrameHello {
		return nil, nil, refuse(conn, fmt.Errorf("%w: expected hello, got frame %q", handover.ErrMalformed, typ))
	}
	var hello handover.Hello
	if err := hello.UnmarshalBinary(payload); err != nil {
		return nil, nil, refuse(conn, err)
	}
	if subtle.ConstantTimeCompare(hello.Token[:], he.Token[:]) != 1 {
		return nil, nil, refuse(conn, errors.New("handover: token does not match the environment"))
	}
	fds, err := conn.ReceiveFDs(len(hello.Entries))
	if err != nil {
		return nil, nil, refuse(conn, err)
	}
	entries := make([]*entry, len(fds))
	for i, e := range hello.Entries {
		entries[i] = &entry{key: key{e.Kind, e.Network, e.Addr}, bound: e.Bound, held: e.Held, fd: fds[i]}
	}
	entries, state, err := takeState(entries)
	if err != nil {
		for _, e := range entries {
			e.close()
		}
		return nil, nil, refuse(conn, err)
	}
	p := &parentLink{
		conn:   conn,
		pid:    he.PID,
		ack:    make(chan struct{}),
		exited: make(chan struct{}),

		generation: hello.Generation,
		live:       hello.Live,
		state:      state,
	}
	go p.watch()
	return p, entries, nil
}

// refuse tells the parent why this process can't take over, and returns
// that as an error.
func refuse(conn *handover.Conn, err error) error {
	_ = conn.WriteFrame(handover.FrameError, []byte(err.Error()))
	conn.Close()
	return fmt.Errorf("%w: %w", ErrHandover, err)
}

// watch reads the parent's acknowledgement, then waits for the end of
// file that its exit brings.
func (p *parentLink) watch() {
	defer close(p.exited)
	defer p.conn.Close()
	typ, _, err := p.conn.ReadFrame()
	var refusal *handover.PeerError
	switch {
	case errors.As(err, &refusal):
		// The parent refused this generation, as it refuses when it
		// cannot write the PID file.
		p.exitErr = fmt.Errorf("%w: the parent (pid %d) refused it: %s", ErrHandover, p.pid, refusal.Message)
		return
	case err != nil || typ != handover.FrameAck:
		p.exitErr = fmt.Errorf("%w (pid %d)", ErrParentExited, p.pid)
		return
	}
	p.ackAt = time.Now()
	close(p.ack)
	// The parent sends nothing more; anything but end of file is as
	// good as it.
	_, _ = io.Copy(io.Discard, p.conn)
}

// ready tells the parent that this process is ready, and that pidFile
// (absolute, or "") is its PID file, and waits for the acknowledgement.
// Once stop is closed, it waits at most grace more: a parent that does not
// answer by then is taken to have failed the upgrade.
func (p *parentLink) ready(pidFile string, stop <-chan struct{}, grace time.Duration) error {
	if err := p.state.finish(); err != nil {
		p.refuse(err)
		return err
	}
	frame, err := (&handover.Ready{PID: os.Getpid(), PIDFile: pidFile}).MarshalBinary()
	if err != nil {
		p.refuse(err)
		return fmt.Errorf("%w: %w", ErrHandover, err)
	}
	if err := p.conn.WriteFrame(handover.FrameReady, frame); err != nil {
		<-p.exited
		return p.exitErr
	}
	var giveUp <-chan time.Time
	for {
		select {
		case <-p.ack:
			return nil
		case <-p.exited:
			return p.exitErr
		case <-stop:
			stop = nil
			t := time.NewTimer(grace)
			defer t.Stop()
			giveUp = t.C
		case <-giveUp:
			p.refuse(ErrStopped)
			return fmt.Errorf("%w: the parent (pid %d) did not acknowledge within %s of Stop", ErrStopped, p.pid, grace)
		}
	}
}

// refuse tells the parent that this process gives up.
func (p *parentLink) refuse(err error) {
	_ = p.conn.WriteFrame(handover.FrameError, []byte(err.Error()))
}
