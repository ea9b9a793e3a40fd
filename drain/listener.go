package drain

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Listener wraps a net.Listener for a server that is not HTTP. It tracks
// the connections it accepts, and Drain stops accepting, tells each
// connection to wind down (Conn.Context is cancelled), waits for the
// program to close them, and closes the rest at the deadline.
//
// The program must close each accepted connection through the *Conn that
// Accept returned (not through NetConn), so that Drain sees it finish.
type Listener struct {
	ln  net.Listener
	log *slog.Logger

	ctx     context.Context // parent of every Conn.Context
	cancel  context.CancelFunc
	changed chan struct{} // wakes Drain; capacity 1

	closeOnce sync.Once
	closeErr  error

	mu        sync.Mutex
	draining  bool
	accepting int
	conns     map[*Conn]struct{}
	stats     Stats
}

var _ net.Listener = (*Listener)(nil)

// NewListener returns a Listener that accepts from ln and owns it: Close
// and Drain close ln. Options.IdleGrace does not apply. A nil ln gives a
// Listener whose methods return ErrNilListener.
func NewListener(ln net.Listener, opts Options) *Listener {
	ctx, cancel := context.WithCancel(context.Background())
	return &Listener{
		ln:      ln,
		log:     opts.Logger,
		ctx:     ctx,
		cancel:  cancel,
		changed: make(chan struct{}, 1),
		conns:   make(map[*Conn]struct{}),
	}
}

// Accept waits for the next connection and returns it as a *Conn. After
// Drain has begun it returns the error of the closed listener, except
// for a connection that the kernel handed over while the listener was
// being closed: that one is returned, already told to wind down, so that
// it is served rather than dropped.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptConn()
	if err != nil {
		return nil, err // not a typed nil *Conn
	}
	return c, nil
}

// AcceptConn is Accept returning the concrete type.
func (l *Listener) AcceptConn() (*Conn, error) {
	if l.ln == nil {
		return nil, ErrNilListener
	}
	l.mu.Lock()
	l.accepting++
	l.mu.Unlock()

	nc, err := l.ln.Accept()

	l.mu.Lock()
	defer l.mu.Unlock()
	l.accepting--
	if l.draining {
		signal(l.changed)
	}
	if err != nil {
		return nil, err
	}
	if l.draining {
		l.stats.Conns++
	}
	c := &Conn{Conn: nc, l: l}
	c.ctx, c.cancel = context.WithCancel(l.ctx)
	l.conns[c] = struct{}{}
	return c, nil
}

// Close closes the underlying listener, stopping Accept; connections
// already accepted are not affected. It is safe to call more than once.
func (l *Listener) Close() error {
	if l.ln == nil {
		return ErrNilListener
	}
	l.closeOnce.Do(func() { l.closeErr = l.ln.Close() })
	return l.closeErr
}

// Addr returns the underlying listener's address, or nil.
func (l *Listener) Addr() net.Addr {
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Draining returns a channel that is closed when Drain begins.
func (l *Listener) Draining() <-chan struct{} { return l.ctx.Done() }

// Drain closes the listener (only this process's copy of the socket),
// cancels the Context of every connection, and waits until the program
// has closed them all or ctx is done. Then it closes what is left and
// reports it as Stats.CutActive. The error is nil if every connection
// finished in time, ctx.Err() if some were cut, and ErrDrained on a
// second call.
func (l *Listener) Drain(ctx context.Context) (Stats, error) {
	if l.ln == nil {
		return Stats{}, ErrNilListener
	}
	l.mu.Lock()
	if l.draining {
		l.mu.Unlock()
		return Stats{}, ErrDrained
	}
	l.draining = true
	l.stats.Conns = len(l.conns)
	open := l.stats.Conns // AcceptConn adds to l.stats from here on
	l.mu.Unlock()
	began := time.Now()
	logAttrs(l.log, slog.LevelInfo, "drain: started", slog.Int("conns", open))

	l.cancel()
	l.Close()

	var err error
	for err == nil {
		l.mu.Lock()
		pending := l.accepting + len(l.conns)
		l.mu.Unlock()
		if pending == 0 {
			break
		}
		select {
		case <-l.changed:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}

	l.mu.Lock()
	if err != nil {
		for c := range l.conns {
			l.stats.CutActive++
			c.Conn.Close()
			c.cancel()
		}
		clear(l.conns)
	}
	st := l.stats
	l.mu.Unlock()

	level := slog.LevelInfo
	if st.Cut() > 0 {
		level = slog.LevelWarn
	}
	logAttrs(l.log, level, "drain: finished", statsAttrs(st, time.Since(began))...)
	return st, err
}

// Conn is a connection accepted by a Listener.
type Conn struct {
	net.Conn
	l      *Listener
	ctx    context.Context
	cancel context.CancelFunc
}

// Context returns a context that is cancelled when the Listener's drain
// begins or the connection is closed. A server loop should finish the
// exchange in progress when it is done, then close the connection.
func (c *Conn) Context() context.Context { return c.ctx }

// NetConn returns the accepted connection. Closing it directly hides
// the close from Drain, which then waits for the deadline.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Close closes the connection and tells the Listener it is finished.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.cancel()
	l := c.l
	l.mu.Lock()
	if _, ok := l.conns[c]; ok {
		delete(l.conns, c)
		if l.draining {
			signal(l.changed)
		}
	}
	l.mu.Unlock()
	return err
}
