package drain

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// rekick is how often Drain sets the waking read deadline of an idle
// connection again while net/http has not closed it: a safety net for
// net/http replacing the deadline just after the connection went idle.
const rekick = 100 * time.Millisecond

// Server serves an *http.Server so that Drain can later stop it without
// losing a request. Create it with NewServer; its methods are safe for
// concurrent use.
type Server struct {
	srv   *http.Server
	grace int64 // IdleGrace in nanoseconds
	log   *slog.Logger
	epoch time.Time // origin of the monotonic clock used for idle times

	draining   atomic.Bool   // set once, when Drain begins; read per request
	drainingCh chan struct{} // closed when Drain begins
	changed    chan struct{} // wakes the drain loop; capacity 1

	// Set once by the first Serve, under mu.
	handler   http.Handler
	connState func(net.Conn, http.ConnState)

	mu          sync.Mutex
	served      bool
	drainStart  int64 // s.now() when Drain began
	listeners   []*httpListener
	accepting   int // Accept calls in flight
	conns       map[*httpConn]struct{}
	passthrough map[net.Conn]*httpConn // *tls.Conn from a TLS listener given to Serve
	stats       Stats
}

// NewServer returns a Server for srv. The first call to Serve or ServeTLS
// wraps srv.Handler and srv.ConnState (the caller's are still called,
// first for ConnState); do not change those two fields afterwards.
// ConnContext, BaseContext, TLSConfig, timeouts and the rest of srv are
// used as they are. The net.Conn that the ConnState and ConnContext hooks
// receive wraps the accepted connection (under a *tls.Conn for
// ServeTLS); its NetConn method returns the accepted one, as
// tls.Conn.NetConn does.
//
// Do not call srv.Shutdown yourself: Drain calls it when that is safe.
// srv.Close stops everything at once, as always.
//
// A nil srv gives a Server whose methods return ErrNilServer.
func NewServer(srv *http.Server, opts Options) *Server {
	return &Server{
		srv:        srv,
		grace:      int64(opts.idleGrace()),
		log:        opts.Logger,
		epoch:      time.Now(),
		drainingCh: make(chan struct{}),
		changed:    make(chan struct{}, 1),
		conns:      make(map[*httpConn]struct{}),
	}
}

// Serve accepts connections on ln and serves them with the http.Server,
// like http.Server.Serve. ln must yield plain connections: for TLS give
// the plain listener to ServeTLS, which is also what makes HTTP/2 work.
// Serve may be called for several listeners.
//
// Serve always closes ln and returns a non-nil error; after Drain has
// begun that error is http.ErrServerClosed. Closing ln stops accepting
// in this process only: a copy of the same socket held by another
// process (the next generation of an upgrade) keeps accepting from it.
// A *net.UnixListener removes its socket file when closed unless
// SetUnlinkOnClose(false) was called; do that when the socket is shared.
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(ln, false, "", "")
}

// ServeTLS is Serve over TLS, like http.Server.ServeTLS: certFile and
// keyFile are used unless srv.TLSConfig already holds a certificate,
// and HTTP/2 is offered unless srv.TLSNextProto disables it.
func (s *Server) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	return s.serve(ln, true, certFile, keyFile)
}

func (s *Server) serve(ln net.Listener, useTLS bool, certFile, keyFile string) error {
	if ln == nil {
		return ErrNilListener
	}
	if s.srv == nil {
		ln.Close()
		return ErrNilServer
	}
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	if !s.served {
		s.served = true
		s.handler = s.srv.Handler
		if s.handler == nil {
			s.handler = http.DefaultServeMux
		}
		s.connState = s.srv.ConnState
		s.srv.Handler = http.HandlerFunc(s.serveHTTP)
		s.srv.ConnState = s.trackState
	}
	l := &httpListener{Listener: ln, s: s, tls: useTLS}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	defer l.Close()

	var err error
	if useTLS {
		err = s.srv.ServeTLS(l, certFile, keyFile)
	} else {
		err = s.srv.Serve(l)
	}
	if s.draining.Load() {
		return http.ErrServerClosed
	}
	return err
}

// Draining returns a channel that is closed when Drain begins. Handlers
// of long requests (streams, long polls) and owners of hijacked
// connections, which Drain does not track, can watch it to wind down
// before the deadline.
func (s *Server) Draining() <-chan struct{} { return s.drainingCh }

// Drain stops the server without losing a request, waiting at most until
// ctx is done. In order, it:
//
//  1. stops accepting in this process: closes the listeners given to
//     Serve (another process holding the same socket keeps accepting, so
//     nothing queued in the kernel is lost);
//  2. answers every further HTTP/1.x request with "Connection: close"
//     and closes that connection after the response;
//  3. waits for connections accepted but still silent to send their
//     request, and serves it;
//  4. closes a keep-alive connection only once it has been idle for
//     IdleGrace since its last response or the start of the drain;
//  5. when no HTTP/1.x connection is left, calls srv.Shutdown, which
//     sends HTTP/2 connections a GOAWAY and waits for their streams;
//  6. if ctx ends first, closes whatever is left and calls srv.Close.
//
// Stats counts what was closed and what had to be cut. The error is nil
// when everything finished in time, ctx.Err() when the deadline cut
// something, or one of ErrNilServer, ErrNotServing and ErrDrained for
// misuse. After ErrNotServing the Server counts as drained: a later
// Serve closes its listener and returns http.ErrServerClosed, so a
// Serve goroutine that had not started yet does not keep serving in a
// process that is about to exit. srv.Shutdown is not called before step
// 5 because net/http drops, without any response, a request it reads
// after Shutdown has begun.
func (s *Server) Drain(ctx context.Context) (Stats, error) {
	if s.srv == nil {
		return Stats{}, ErrNilServer
	}
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return Stats{}, ErrDrained
	}
	began := time.Now()
	s.drainStart = s.now()
	s.stats.Conns = len(s.conns)
	open := s.stats.Conns // Accept adds to s.stats from here on
	s.draining.Store(true)
	close(s.drainingCh)
	lns := s.listeners
	served := s.served
	s.mu.Unlock()
	if !served {
		// A Serve that was about to start (go s.Serve(ln) just before an
		// upgrade finished) now closes its listener instead of serving
		// connections nobody would drain.
		return Stats{}, ErrNotServing
	}
	logAttrs(s.log, slog.LevelInfo, "drain: started", slog.Int("conns", open))

	for _, l := range lns {
		l.Close()
	}
	err := s.drainHTTP1(ctx)
	if err == nil {
		err = s.srv.Shutdown(ctx)
	}
	if err != nil {
		s.cut()
	}

	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	level := slog.LevelInfo
	if st.Cut() > 0 {
		level = slog.LevelWarn
	}
	logAttrs(s.log, level, "drain: finished", statsAttrs(st, time.Since(began))...)
	return st, err
}

// drainHTTP1 runs steps 2 to 4 of Drain: it returns nil once no Accept is
// in flight and every connection left is HTTP/2, or ctx.Err().
func (s *Server) drainHTTP1(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := s.now()
		next := int64(-1)
		var idle, kick []*httpConn
		s.mu.Lock()
		pending := s.accepting
		for c := range s.conns {
			var due int64
			switch c.state.Load() {
			case stH2, stGone:
				continue
			case stIdle:
				due = max(c.idleAt.Load(), s.drainStart) + s.grace
				if now >= due {
					idle = append(idle, c)
				}
			case stClosing:
				due = c.kickAt + int64(rekick)
				if now >= due {
					kick = append(kick, c)
				}
			}
			if due > now && (next < 0 || due < next) {
				next = due
			}
			pending++
		}
		s.mu.Unlock()
		if pending == 0 {
			return nil
		}
		for _, c := range idle {
			c.closeIdle(now)
		}
		for _, c := range kick {
			c.kick(now)
		}
		if len(idle)+len(kick) > 0 {
			continue // recompute the next wake-up with the new states
		}

		var tc <-chan time.Time
		if next >= 0 {
			timer.Reset(time.Duration(next - now))
			tc = timer.C
		}
		// Go 1.23 timer semantics (the go line of this module): Reset
		// discards a value that fired and was never received.
		select {
		case <-s.changed:
		case <-tc:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// cut closes every connection still open at the deadline, counts them,
// and closes the http.Server.
func (s *Server) cut() {
	s.mu.Lock()
	for c := range s.conns {
		switch c.state.Swap(stGone) {
		case stNew:
			s.stats.CutNew++
		case stIdle, stClosing:
			s.stats.ClosedIdle++
		case stGone:
		default:
			s.stats.CutActive++
		}
		// Close the bare connection, not a *tls.Conn over it: a TLS close
		// writes an alert and can block on a peer that does not read.
		c.rawConn().Close()
	}
	clear(s.conns)
	clear(s.passthrough)
	s.mu.Unlock()
	s.srv.Close()
}

// serveHTTP wraps the caller's handler: during a drain every HTTP/1.x
// response says "Connection: close", and net/http closes the connection
// after writing it. The header is set before the handler runs so that
// the handler can still see and override it.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && s.draining.Load() {
		w.Header().Set("Connection", "close")
	}
	s.handler.ServeHTTP(w, r)
}

// trackState wraps the caller's ConnState hook.
func (s *Server) trackState(nc net.Conn, cs http.ConnState) {
	if s.connState != nil {
		s.connState(nc, cs)
	}
	c := s.lookup(nc)
	if c == nil {
		return
	}
	switch cs {
	case http.StateActive:
		if c.state.Load() == stNew && c.tls {
			// First sign of life after the TLS handshake: HTTP/2 or not.
			// HTTP/2 connections are left to Shutdown's GOAWAY.
			if tc, ok := nc.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
				// A drain may be waiting for this connection to show
				// what it is before it calls Shutdown: wake it.
				if c.state.CompareAndSwap(stNew, stH2) && s.draining.Load() {
					signal(s.changed)
				}
				return
			}
		}
		c.markBusy()
	case http.StateIdle:
		if c.state.Load() == stH2 {
			return
		}
		if s.draining.Load() {
			c.idleAt.Store(s.now())
			c.state.Store(stIdle)
			signal(s.changed)
			return
		}
		c.state.Store(stIdle)
	case http.StateClosed, http.StateHijacked:
		s.remove(c)
	}
}

// lookup finds the tracked connection behind a conn that net/http passes
// to ConnState: the *httpConn itself or a *tls.Conn over it.
func (s *Server) lookup(nc net.Conn) *httpConn {
	switch c := nc.(type) {
	case *httpConn:
		return c
	case *tls.Conn:
		if hc, ok := c.NetConn().(*httpConn); ok {
			return hc
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.passthrough[nc]
	}
	return nil
}

func (s *Server) remove(c *httpConn) {
	st := c.state.Swap(stGone)
	s.mu.Lock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		if c.pass != nil {
			delete(s.passthrough, c.pass)
		}
		if st == stClosing {
			s.stats.ClosedIdle++
		}
	}
	s.mu.Unlock()
	if s.draining.Load() {
		signal(s.changed)
	}
}

// now reads a monotonic clock, in nanoseconds since NewServer.
func (s *Server) now() int64 { return int64(time.Since(s.epoch)) }

// httpListener tracks the connections it accepts and the Accept calls in
// flight, so that Drain knows when no new connection can appear.
type httpListener struct {
	net.Listener
	s         *Server
	tls       bool // served by ServeTLS: conns are wrapped in *tls.Conn
	closeOnce sync.Once
	closeErr  error
}

func (l *httpListener) Accept() (net.Conn, error) {
	s := l.s
	s.mu.Lock()
	s.accepting++
	s.mu.Unlock()

	nc, err := l.Listener.Accept()

	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepting--
	draining := s.draining.Load()
	if draining {
		signal(s.changed)
	}
	if err != nil {
		return nil, err
	}
	// An Accept that raced with Close still returns its connection: it
	// is served and drained like the others, never dropped.
	if draining {
		s.stats.Conns++
	}
	c := &httpConn{Conn: nc, tls: l.tls}
	s.conns[c] = struct{}{}
	if tc, ok := nc.(*tls.Conn); ok {
		// A TLS listener given to Serve. net/http must see the *tls.Conn
		// itself to run the handshake and HTTP/2, so it is not wrapped;
		// the drain then cannot see the first bytes of a request and
		// relies on ConnState alone.
		c.tls, c.pass = true, tc
		if s.passthrough == nil {
			s.passthrough = make(map[net.Conn]*httpConn)
		}
		s.passthrough[tc] = c
		return tc, nil
	}
	return c, nil
}

// Close closes the listener once; later calls return the first result.
func (l *httpListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}
