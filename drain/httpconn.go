package drain

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// States of an HTTP connection as the drain sees them. net/http's
// ConnState only says a connection is active once a whole request header
// has been read, so reads move a connection out of stNew and stIdle as
// soon as the first byte of a request arrives: a slow request is never
// mistaken for silence.
const (
	stNew     int32 = iota // accepted, no request byte seen yet
	stBusy                 // a request is being read or served
	stIdle                 // HTTP/1.x keep-alive, between requests
	stClosing              // idle past the grace: the reader is being woken to close
	stH2                   // HTTP/2 over TLS, left to Shutdown's GOAWAY
	stGone                 // closed, hijacked or cut
)

// aLongTimeAgo is a deadline in the past, to wake a blocked Read.
var aLongTimeAgo = time.Unix(1, 0)

// httpConn is the connection net/http serves: the accepted one, seen
// through a Read that notices the first byte of every request.
//
// An idle connection is not closed from the drain's goroutine. Closing
// would race with a request that the server's reader has just taken from
// the socket and not yet reported, and that request would be lost. The
// drain sets a read deadline in the past instead, and the server's own
// reader decides: either its read returned bytes (the request is served,
// with "Connection: close") or it timed out with nothing consumed, in
// which case it looks at the socket once more (a request that arrived
// while it was waking up is served too) and otherwise lets net/http close
// the connection. What remains is the race every HTTP/1.1 server has: a
// client sending at the instant the connection closes.
type httpConn struct {
	net.Conn
	tls    bool         // under a *tls.Conn: reads before the handshake completes say nothing
	pass   net.Conn     // the *tls.Conn handed to net/http unwrapped, or nil
	state  atomic.Int32 // one of the st constants
	idleAt atomic.Int64 // Server.now() when it went idle during a drain

	mu     sync.Mutex // orders read-deadline changes with state changes to and from stClosing
	kickAt int64      // when the read deadline was last set to wake the reader; drain loop only
}

// NetConn returns the accepted connection, as tls.Conn.NetConn does.
// The ConnState and ConnContext hooks of the http.Server receive an
// *httpConn (or a *tls.Conn over one).
func (c *httpConn) NetConn() net.Conn { return c.Conn }

func (c *httpConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if n > 0 {
			if st := c.state.Load(); st != stBusy && (st != stNew || !c.tls) {
				c.markBusy()
			}
			return n, err
		}
		if err == nil || c.state.Load() != stClosing || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		// The drain woke this reader. A request that arrived meanwhile
		// is served; otherwise the timeout makes net/http close.
		if !readable(c.Conn) || !c.reprieve() {
			return n, err
		}
	}
}

// markBusy records that a request is in progress.
func (c *httpConn) markBusy() {
	for {
		switch st := c.state.Load(); st {
		case stNew, stIdle:
			if c.state.CompareAndSwap(st, stBusy) {
				return
			}
		case stClosing:
			if c.reprieve() {
				return
			}
		default:
			return
		}
	}
}

// reprieve takes a connection the drain was closing back to busy, and
// clears the read deadline set to wake its reader. It may clear a
// deadline net/http set too; during a drain the drain's own deadline
// bounds the wait instead.
func (c *httpConn) reprieve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.state.CompareAndSwap(stClosing, stBusy) {
		return false
	}
	c.Conn.SetReadDeadline(time.Time{})
	return true
}

// closeIdle starts closing an idle connection: see httpConn.
func (c *httpConn) closeIdle(now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.CompareAndSwap(stIdle, stClosing) {
		c.kickAt = now
		c.Conn.SetReadDeadline(aLongTimeAgo)
	}
}

// kick sets the waking deadline again, in case net/http replaced it
// between the idle transition and its next read.
func (c *httpConn) kick(now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == stClosing {
		c.kickAt = now
		c.Conn.SetReadDeadline(aLongTimeAgo)
	}
}

// rawConn returns the accepted connection without any TLS layer.
func (c *httpConn) rawConn() net.Conn {
	if nc, ok := c.pass.(interface{ NetConn() net.Conn }); ok {
		return nc.NetConn()
	}
	return c.Conn
}

// CloseWrite half-closes the connection if it supports it. net/http uses
// it to deliver a final response before closing (see
// net/http conn.closeWriteAndWait).
func (c *httpConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return &net.OpError{Op: "close", Net: "drain", Err: errors.ErrUnsupported}
}

// ReadFrom keeps sendfile and splice available to net/http's response
// writer when the accepted connection has them.
func (c *httpConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}
