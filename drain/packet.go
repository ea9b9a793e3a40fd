package drain

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// PacketHandler handles one datagram p that conn read from the sender
// from, and answers it, if the protocol answers, with conn.WriteTo. p is
// valid only until the handler returns: a handler that hands the work to
// another goroutine must copy p, and must answer before it returns, or
// Drain cannot wait for the answer.
type PacketHandler func(conn net.PacketConn, p []byte, from net.Addr)

// maxDatagram is the size of each Serve loop's buffer: the largest UDP
// payload, rounded up. A longer datagram (possible on Unix datagram
// sockets) is truncated, as a read into a short buffer truncates it.
const maxDatagram = 64 << 10

// PacketServer serves datagrams from net.PacketConns (UDP, unixgram) with
// a PacketHandler, so that Drain can stop it without losing a datagram
// it has read. Create it with NewPacketServer; its methods are safe for
// concurrent use. See "Packet servers" in the package documentation for
// what an upgrade can lose and why this loses nothing.
type PacketServer struct {
	handler    PacketHandler
	log        *slog.Logger
	drainingCh chan struct{} // closed when Drain begins
	changed    chan struct{} // wakes Drain; capacity 1

	mu       sync.Mutex
	stopped  bool // Drain began, or Close was called
	served   bool
	conns    map[net.PacketConn]bool // every conn given to Serve: Drain and Close close them
	loops    int                     // Serve calls reading or handling
	handling int                     // handlers running
	stats    Stats
}

// NewPacketServer returns a PacketServer that calls h for each datagram.
// Options.IdleGrace does not apply. A nil h gives a PacketServer whose
// methods return ErrNilHandler.
func NewPacketServer(h PacketHandler, opts Options) *PacketServer {
	return &PacketServer{
		handler:    h,
		log:        opts.Logger,
		drainingCh: make(chan struct{}),
		changed:    make(chan struct{}, 1),
		conns:      make(map[net.PacketConn]bool),
	}
}

// Serve reads datagrams from conn and calls the handler for each, one at
// a time, on this goroutine. Call Serve from several goroutines, on the
// same conn or on others, to handle datagrams in parallel. Serve uses
// conn's read deadline to stop reading: leave it alone.
//
// Serve returns once Drain or Close has stopped it, after the handler of
// the last datagram it read has returned, with an error that wraps
// net.ErrClosed; or, before that, with the error of a read that failed.
// Serve does not close conn; Drain and Close do.
func (s *PacketServer) Serve(conn net.PacketConn) error {
	if conn == nil {
		return ErrNilPacketConn
	}
	if s.handler == nil {
		return ErrNilHandler
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return errPacketServerStopped
	}
	s.served = true
	s.conns[conn] = true
	s.loops++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.loops--
		s.mu.Unlock()
		signal(s.changed)
	}()

	buf := make([]byte, maxDatagram)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err == nil || n > 0 {
			// Read before the drain stopped reading, or as it did:
			// answer it.
			s.handle(conn, buf[:n], from)
		}
		if err != nil {
			s.mu.Lock()
			stopped := s.stopped
			s.mu.Unlock()
			if stopped {
				return errPacketServerStopped
			}
			return err
		}
	}
}

var errPacketServerStopped = fmt.Errorf("drain: packet server stopped: %w", net.ErrClosed)

func (s *PacketServer) handle(conn net.PacketConn, p []byte, from net.Addr) {
	s.mu.Lock()
	s.handling++
	if s.stopped {
		s.stats.Conns++
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.handling--
		s.mu.Unlock()
	}()
	s.handler(conn, p, from)
}

// Draining returns a channel that is closed when Drain begins.
func (s *PacketServer) Draining() <-chan struct{} { return s.drainingCh }

// Drain stops reading, waits until the handler of every datagram already
// read has returned (and so has answered it), or until ctx is done, and
// then closes the conns given to Serve (this process's copies of the
// sockets). A datagram that no Serve loop has read stays in the socket's
// receive queue, for another process that shares the socket (the new
// generation of an upgrade) to read.
//
// In the Stats, Conns counts the datagrams handled from the start of the
// drain: those being handled then, and those read as reading stopped.
// CutActive counts the handlers still running at the deadline, whose
// answers may be lost: their conn is closed under them. The error is nil
// if every handler returned in time, ctx.Err() if not, ErrNotServing
// before any call to Serve, and ErrDrained on a second call.
func (s *PacketServer) Drain(ctx context.Context) (Stats, error) {
	if s.handler == nil {
		return Stats{}, ErrNilHandler
	}
	s.mu.Lock()
	switch {
	case s.stopped:
		s.mu.Unlock()
		return Stats{}, ErrDrained
	case !s.served:
		s.mu.Unlock()
		return Stats{}, ErrNotServing
	}
	s.stopped = true
	close(s.drainingCh)
	s.stats.Conns = s.handling
	handling := s.handling
	for c := range s.conns {
		// Wakes every read waiting on c; one that has a datagram
		// returns it first.
		c.SetReadDeadline(aLongTimeAgo)
	}
	s.mu.Unlock()
	began := time.Now()
	logAttrs(s.log, slog.LevelInfo, "drain: started", slog.Int("handling", handling))

	var err error
	for err == nil {
		s.mu.Lock()
		loops := s.loops
		s.mu.Unlock()
		if loops == 0 {
			break
		}
		select {
		case <-s.changed:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}

	s.mu.Lock()
	if err != nil {
		s.stats.CutActive = s.handling
	}
	st := s.stats
	conns := s.conns
	s.conns = map[net.PacketConn]bool{}
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}

	level := slog.LevelInfo
	if st.Cut() > 0 {
		level = slog.LevelWarn
	}
	logAttrs(s.log, level, "drain: finished", statsAttrs(st, time.Since(began))...)
	return st, err
}

// Close closes every conn given to Serve at once, without waiting for
// handlers: a datagram being handled may go unanswered. It returns the
// first error of those closes; it is safe to call more than once, and
// after Drain.
func (s *PacketServer) Close() error {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.drainingCh)
	}
	conns := s.conns
	s.conns = map[net.PacketConn]bool{}
	s.mu.Unlock()
	var first error
	for c := range conns {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
