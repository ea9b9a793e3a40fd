package drain

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// DefaultIdleGrace is the IdleGrace used when [Options.IdleGrace] is zero.
//
// An idle keep-alive connection can only be closed, never told to close:
// a client that sends its next request while the close is on its way
// sees EOF or a reset. A connection that is in use, though, is sure to
// send again soon, and that request gets a "Connection: close" answer and
// a clean close. One second covers the gap between two requests of any
// client that is actively using its connection (including a slow
// scheduler or a loaded peer), so those are never cut; a connection
// silent for longer is a pooled spare, and closing it costs nothing a
// well-behaved client does not already handle. Longer would only delay
// every upgrade by idle connections nobody is using.
const DefaultIdleGrace = time.Second

// Options configure a [Server], a [Listener] or a [PacketServer]. The
// zero value is ready to use.
type Options struct {
	// IdleGrace is how long an HTTP/1.x keep-alive connection must have
	// been idle, counted from the later of its last response and the
	// start of the drain, before Drain closes it. A client that sends a
	// request at least this often always gets a response carrying
	// "Connection: close" instead of having its connection closed under
	// it. Zero means DefaultIdleGrace; a negative value closes idle
	// connections as soon as the drain begins. Listener and
	// PacketServer ignore it.
	IdleGrace time.Duration

	// Logger receives one record when a drain starts and one when it
	// ends (a warning if anything was cut). Nil means silent.
	Logger *slog.Logger
}

func (o Options) idleGrace() time.Duration {
	switch {
	case o.IdleGrace == 0:
		return DefaultIdleGrace
	case o.IdleGrace < 0:
		return 0
	}
	return o.IdleGrace
}

// Stats reports what a drain did. Cut connections are the ones the
// deadline ended; everything else finished on its own terms. For a
// PacketServer, each datagram counts as a connection with one request:
// see PacketServer.Drain.
type Stats struct {
	// Conns counts the connections open when the drain began plus those
	// accepted while it ran.
	Conns int

	// ClosedIdle counts HTTP/1.x keep-alive connections the drain closed
	// while no request was in progress on them: after IdleGrace, or idle
	// at the deadline. No request was lost on them.
	ClosedIdle int

	// CutNew counts connections closed at the deadline before they had
	// delivered a whole first request (a client that never sent, or sent
	// too slowly). Always zero for a Listener.
	CutNew int

	// CutActive counts connections closed at the deadline with work in
	// progress: an HTTP/1.x request being read or served, an HTTP/2
	// connection with open streams, or a Listener connection the program
	// had not closed.
	CutActive int
}

// Cut returns the number of connections the deadline cut, CutNew +
// CutActive.
func (s Stats) Cut() int { return s.CutNew + s.CutActive }

// Errors returned for misuse. Drain returns them before doing anything,
// so a program can log them and still exit.
var (
	// ErrNilServer is returned by Server methods when NewServer was given
	// a nil *http.Server.
	ErrNilServer = errors.New("drain: nil *http.Server")

	// ErrNilListener is returned when a nil net.Listener is given to
	// NewListener or Server.Serve.
	ErrNilListener = errors.New("drain: nil net.Listener")

	// ErrNilPacketConn is returned when PacketServer.Serve is given a
	// nil net.PacketConn.
	ErrNilPacketConn = errors.New("drain: nil net.PacketConn")

	// ErrNilHandler is returned by PacketServer methods when
	// NewPacketServer was given a nil PacketHandler.
	ErrNilHandler = errors.New("drain: nil PacketHandler")

	// ErrNotServing is returned by Server.Drain and PacketServer.Drain
	// before any call to Serve (or ServeTLS): there is nothing to drain
	// yet.
	ErrNotServing = errors.New("drain: Drain called before Serve")

	// ErrDrained is returned by a second call to Drain.
	ErrDrained = errors.New("drain: already drained")
)

func logAttrs(l *slog.Logger, level slog.Level, msg string, attrs ...slog.Attr) {
	if l != nil {
		l.LogAttrs(context.Background(), level, msg, attrs...)
	}
}

func statsAttrs(st Stats, took time.Duration) []slog.Attr {
	return []slog.Attr{
		slog.Int("conns", st.Conns),
		slog.Int("closed_idle", st.ClosedIdle),
		slog.Int("cut_new", st.CutNew),
		slog.Int("cut_active", st.CutActive),
		slog.Duration("took", took),
	}
}

// signal wakes a drain loop waiting on ch without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
