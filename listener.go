package tableflip

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// listener is the net.Listener that Listen, ListenWithCallback and
// Listener return: the socket, behind a gate. In a new generation the gate
// of an inherited listener is shut until Ready has succeeded: Accept waits
// for it, and connections wait in the kernel's queue, where the parent,
// which shares the socket, keeps accepting them. A new generation that
// dies while it initialises so takes no connection with it, whatever the
// program does with its listeners. Every other listener's gate is open.
//
// Besides net.Listener and syscall.Conn it has the methods of
// *net.TCPListener and *net.UnixListener that need no type of their own
// (File, SetDeadline), passed on to the socket. A program cannot assert
// it to *net.TCPListener: that is the price of the gate, and it holds in
// every generation, so that a program that relies on it fails at once, not
// at its first upgrade.
type listener struct {
	Listener
	gate <-chan struct{}
	// conns remembers what Accept returns, for Stats.
	conns *connSet

	closed    chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex // guards deadline and changed
	deadline time.Time
	// changed is closed and replaced when the deadline changes, so
	// that an Accept waiting at the gate sees the new one.
	changed chan struct{}
}

var (
	_ Listener     = (*listener)(nil)
	_ net.Listener = (*listener)(nil)
)

func newListener(ln Listener, gate <-chan struct{}, conns *connSet) *listener {
	return &listener{Listener: ln, gate: gate, conns: conns, closed: make(chan struct{}), changed: make(chan struct{})}
}

// Accept waits for the gate to open, then accepts a connection.
func (l *listener) Accept() (net.Conn, error) {
	if err := l.wait(); err != nil {
		return nil, err
	}
	c, err := l.Listener.Accept()
	if err == nil {
		l.conns.add(c)
	}
	return c, err
}

func (l *listener) wait() error {
	select {
	case <-l.gate:
		return nil
	default:
	}
	for {
		l.mu.Lock()
		deadline, changed := l.deadline, l.changed
		l.mu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-l.gate:
			return nil
		case <-l.closed:
			return l.opError(net.ErrClosed)
		case <-expired:
			return l.opError(os.ErrDeadlineExceeded)
		case <-changed:
		}
	}
}

func (l *listener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: err}
}

// Close closes the socket in this process; an Accept waiting at the gate
// returns net.ErrClosed.
func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// SetDeadline sets the deadline of Accept, as for *net.TCPListener, also
// for an Accept that waits at the gate.
func (l *listener) SetDeadline(t time.Time) error {
	d, ok := l.Listener.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return errors.New("tableflip: " + l.Addr().Network() + " listener has no deadline")
	}
	if err := d.SetDeadline(t); err != nil {
		return err
	}
	l.mu.Lock()
	l.deadline = t
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	return nil
}

// File returns a copy of the socket, as for *net.TCPListener. Closing it
// does not affect the listener.
func (l *listener) File() (*os.File, error) {
	f, ok := l.Listener.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, errors.New("tableflip: " + l.Addr().Network() + " listener has no file")
	}
	return f.File()
}
