package tableflip

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
)

// ErrNoState is returned by State when there is no state to read: on a
// first start without state in systemd's fd store (see SystemdOptions),
// or when the previous generation has no Options.WriteState.
// State that is there but empty is a reader at its end instead.
var ErrNoState = errors.New("tableflip: no state from a previous generation")

// State returns the state the previous generation wrote with
// Options.WriteState, as a stream: during an upgrade, the parent's; on a
// first start, what a final Stop stored in systemd's fd store, if
// systemd handed it back (see SystemdOptions). Read it before Ready:
// Ready discards whatever is left. Every call returns the same reader.
//
// The reader returns io.EOF at the end of complete state. If the previous
// generation's writer failed, or the previous generation died while
// writing, it returns an error instead: truncated state never reads as
// valid short state. A program that cannot use the state it reads should
// exit (or at least not call Ready): the upgrade then fails, and the
// previous generation keeps serving and is told through
// Options.OnUpgradeFailed.
func (u *Upgrader) State() (io.Reader, error) {
	if u.parent == nil && u.sd != nil && u.sd.state != nil {
		return u.sd.state, nil
	}
	if u.parent == nil || u.parent.state == nil {
		return nil, ErrNoState
	}
	return u.parent.state, nil
}

// stateStream is the new generation's end of the state stream.
type stateStream struct {
	*handover.StateReader
	conn *handover.Conn
}

// takeState removes the state socket from what the parent passed on, if
// there is one, and makes it the state stream.
func takeState(entries []*entry) ([]*entry, *stateStream, error) {
	for i, e := range entries {
		if e.kind != handover.KindState {
			continue
		}
		rest := append(entries[:i:i], entries[i+1:]...)
		conn, err := handover.NewConn(e.fd)
		if err != nil {
			return rest, nil, err
		}
		return rest, &stateStream{handover.NewStateReader(conn), conn}, nil
	}
	return entries, nil, nil
}

// finish reads what the program left of the state, so that the previous
// generation's writer completes, and closes the stream. It returns the
// stream's error, if any: the state was not handed over whole.
func (s *stateStream) finish() error {
	if s == nil {
		return nil
	}
	_, err := io.Copy(io.Discard, s.StateReader)
	s.conn.Close()
	if err != nil {
		return fmt.Errorf("tableflip: reading state: %w", err)
	}
	return nil
}

// stateSender is the old generation's end of the state stream.
type stateSender struct {
	conn     *handover.Conn
	childEnd *os.File
	done     chan error
	// finished is closed when the writer has returned; nil until it
	// starts.
	finished chan struct{}
}

// newStateSender makes the state socket if the program writes state.
func (u *Upgrader) newStateSender() (*stateSender, error) {
	if u.opts.WriteState == nil {
		return nil, nil
	}
	conn, childEnd, err := handover.Pair()
	if err != nil {
		return nil, err
	}
	return &stateSender{conn: conn, childEnd: childEnd, done: make(chan error, 1)}, nil
}

// add puts the child's end of the state socket in what is passed on.
func (s *stateSender) add(p *passed) error {
	if s == nil {
		return nil
	}
	rc, err := s.childEnd.SyscallConn()
	if err != nil {
		return err
	}
	var fd int
	if err := rc.Control(func(raw uintptr) { fd = int(raw) }); err != nil {
		return err
	}
	p.entries = append(p.entries, handover.Entry{Kind: handover.KindState})
	p.fds = append(p.fds, fd)
	return nil
}

// start runs the program's writer, in parallel with the new generation's
// initialisation, once the child has its end.
func (s *stateSender) start(write func(io.Writer) error) {
	if s == nil {
		return
	}
	s.childEnd.Close()
	s.finished = make(chan struct{})
	go func() {
		defer close(s.finished)
		defer s.conn.Close()
		w := handover.NewStateWriter(s.conn)
		err := write(w)
		if err != nil {
			// The result first: the child answers the abort, and
			// by then the reason must be known here.
			s.done <- fmt.Errorf("%w: %w", errStateWriter, err)
			w.Abort(err)
			return
		}
		if err := w.Close(); err != nil {
			s.done <- fmt.Errorf("tableflip: sending state: %w", err)
			return
		}
		s.done <- nil
	}()
}

// wait returns the writer's result.
func (s *stateSender) wait() error {
	if s == nil {
		return nil
	}
	return <-s.done
}

// failed returns the writer's error if it has failed already.
func (s *stateSender) failed() error {
	if s == nil {
		return nil
	}
	select {
	case err := <-s.done:
		s.done <- err
		return err
	default:
		return nil
	}
}

// close releases the sockets and, if the writer started, waits for it to
// return until deadline, so that OnUpgradeFailed does not run beside the
// program's own writer. It reports whether the writer has returned. Once
// the sockets are closed, a writer that writes returns at once with an
// error; one that blocks on something else is left behind at the
// deadline: the upgrade, and the next one, do not wait for it.
func (s *stateSender) close(deadline time.Time) bool {
	if s == nil {
		return true
	}
	s.childEnd.Close()
	s.conn.Close()
	if s.finished == nil {
		return true
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-s.finished:
		return true
	case <-t.C:
		return false
	}
}
