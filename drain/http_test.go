package drain_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/drain"
	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// wait bounds every wait on an event in these tests, so that a bug shows
// up as a failure and not a hung test run. Nothing waits for it to pass.
const wait = 20 * time.Second

type testServer struct {
	t        *testing.T
	srv      *http.Server
	ds       *drain.Server
	addr     string
	states   chan http.ConnState // from the caller's ConnState hook
	serveErr chan error
}

// startServer serves h on a loopback port through a drain.Server whose
// http.Server reports connection states to ts.states.
func startServer(t *testing.T, h http.Handler, opts drain.Options) *testServer {
	t.Helper()
	return startServerWith(t, &http.Server{Handler: h}, opts, nil)
}

func startServerWith(t *testing.T, srv *http.Server, opts drain.Options, serve func(*drain.Server, net.Listener) error) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		t:        t,
		srv:      srv,
		addr:     ln.Addr().String(),
		states:   make(chan http.ConnState, 1000),
		serveErr: make(chan error, 1),
	}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, cs http.ConnState) {
		if prev != nil {
			prev(c, cs)
		}
		ts.states <- cs
	}
	ts.ds = drain.NewServer(srv, opts)
	if serve == nil {
		serve = (*drain.Server).Serve
	}
	go func() { ts.serveErr <- serve(ts.ds, ln) }()
	t.Cleanup(func() { srv.Close() })
	return ts
}

// waitState waits for the caller's ConnState hook to report want,
// skipping other states.
func (ts *testServer) waitState(want http.ConnState) {
	ts.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case cs := <-ts.states:
			if cs == want {
				return
			}
		case <-timeout:
			ts.t.Fatalf("no %v connection state within %v", want, wait)
		}
	}
}

type drainResult struct {
	stats drain.Stats
	err   error
}

// drainAsync starts Drain and returns once it has begun.
func (ts *testServer) drainAsync(ctx context.Context) <-chan drainResult {
	ts.t.Helper()
	done := make(chan drainResult, 1)
	go func() {
		st, err := ts.ds.Drain(ctx)
		done <- drainResult{st, err}
	}()
	select {
	case <-ts.ds.Draining():
	case <-time.After(wait):
		ts.t.Fatal("Drain did not begin")
	}
	return done
}

// drained checks that the drain finished without error and with the
// stats want.
func (ts *testServer) drained(done <-chan drainResult, want drain.Stats) {
	ts.t.Helper()
	r := ts.result(done)
	if r.err != nil {
		ts.t.Fatalf("Drain: %v", r.err)
	}
	if r.stats != want {
		ts.t.Fatalf("stats %+v, want %+v", r.stats, want)
	}
}

func (ts *testServer) result(done <-chan drainResult) drainResult {
	ts.t.Helper()
	select {
	case r := <-done:
		select {
		case err := <-ts.serveErr:
			if !errors.Is(err, http.ErrServerClosed) {
				ts.t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
			}
		case <-time.After(wait):
			ts.t.Error("Serve did not return after Drain")
		}
		return r
	case <-time.After(wait):
		ts.t.Fatal("Drain did not return")
	}
	return drainResult{}
}

// client is a raw HTTP/1.1 connection, so that the test sees exactly
// what the server sends and when it closes.
type client struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(wait))
	return &client{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *client) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) get(path string) *http.Response {
	c.t.Helper()
	c.write("GET " + path + " HTTP/1.1\r\nHost: test\r\n\r\n")
	return c.response()
}

func (c *client) response() *http.Response {
	c.t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatalf("reading response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("reading body: %v", err)
	}
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("status %s: %s", resp.Status, body)
	}
	return resp
}

// expectEOF checks that the server closed the connection without sending
// anything more.
func (c *client) expectEOF() {
	c.t.Helper()
	b, err := c.br.ReadByte()
	if err == nil {
		c.t.Fatalf("read %q, want EOF", b)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("read: %v, want EOF", err)
	}
}

func hello() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
}

func longCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// An idle keep-alive connection is closed once idle for IdleGrace.
func TestDrainClosesIdleAfterGrace(t *testing.T) {
	ts := startServer(t, hello(), drain.Options{IdleGrace: 20 * time.Millisecond})
	c := dial(t, ts.addr)
	if resp := c.get("/"); resp.Close {
		t.Fatal("Connection: close before the drain")
	}
	ts.waitState(http.StateIdle)

	r := ts.result(ts.drainAsync(longCtx(t)))
	c.expectEOF()
	if r.err != nil {
		t.Fatalf("Drain: %v", r.err)
	}
	if want := (drain.Stats{Conns: 1, ClosedIdle: 1}); r.stats != want {
		t.Fatalf("stats %+v, want %+v", r.stats, want)
	}
}

// A request on a kept-alive connection during the drain is answered
// with Connection: close, and the connection closed after it.
func TestDrainConnectionClose(t *testing.T) {
	ts := startServer(t, hello(), drain.Options{IdleGrace: time.Hour})
	c := dial(t, ts.addr)
	c.get("/")
	ts.waitState(http.StateIdle)

	done := ts.drainAsync(longCtx(t))
	resp := c.get("/")
	if !resp.Close {
		t.Fatal("response during drain without Connection: close")
	}
	c.expectEOF()
	ts.drained(done, drain.Stats{Conns: 1})
}

// A connection accepted before the drain, whose request comes slowly
// after the drain began, is served. The pauses make the client slow;
// they are longer than IdleGrace so that a drain that treated silence
// as idleness would have closed the connection.
func TestDrainServesSlowFirstRequest(t *testing.T) {
	const grace = 20 * time.Millisecond
	ts := startServer(t, hello(), drain.Options{IdleGrace: grace})
	c := dial(t, ts.addr)
	ts.waitState(http.StateNew)

	done := ts.drainAsync(longCtx(t))
	time.Sleep(3 * grace) // a client slow to start
	c.write("GET / HTTP/1.1\r\n")
	time.Sleep(3 * grace) // and slow to finish
	c.write("Host: test\r\n\r\n")
	if resp := c.response(); !resp.Close {
		t.Fatal("response during drain without Connection: close")
	}
	c.expectEOF()
	ts.drained(done, drain.Stats{Conns: 1})
}

// A kept-alive connection that starts its next request within IdleGrace
// and finishes it slowly, long after, is served: the first bytes, not a
// whole header, end idleness.
func TestDrainServesSlowKeepAliveRequest(t *testing.T) {
	const grace = 200 * time.Millisecond
	ts := startServer(t, hello(), drain.Options{IdleGrace: grace})
	c := dial(t, ts.addr)
	c.get("/")
	ts.waitState(http.StateIdle)

	done := ts.drainAsync(longCtx(t))
	c.write("GET / HT")
	time.Sleep(2 * grace) // a slow client
	c.write("TP/1.1\r\nHost: test\r\n\r\n")
	if resp := c.response(); !resp.Close {
		t.Fatal("response during drain without Connection: close")
	}
	c.expectEOF()
	ts.drained(done, drain.Stats{Conns: 1})
}

// A connection that never sends a request is closed at the deadline and
// counted; so is one whose request is still being handled.
func TestDrainCutsAtDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			<-release
		}
	}), drain.Options{})
	silent := dial(t, ts.addr)
	ts.waitState(http.StateNew)
	busy := dial(t, ts.addr)
	busy.write("GET /block HTTP/1.1\r\nHost: test\r\n\r\n")
	ts.waitState(http.StateActive)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r := ts.result(ts.drainAsync(ctx))
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("Drain: %v, want %v", r.err, context.DeadlineExceeded)
	}
	if want := (drain.Stats{Conns: 2, CutNew: 1, CutActive: 1}); r.stats != want {
		t.Fatalf("stats %+v, want %+v", r.stats, want)
	}
	if r.stats.Cut() != 2 {
		t.Fatalf("Cut() = %d, want 2", r.stats.Cut())
	}
	silent.expectEOF()
	busy.expectEOF()
}

// A request in progress when the drain begins finishes; its connection
// is then idle and closed after the grace.
func TestDrainWaitsForHandler(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	ts := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "done")
	}), drain.Options{IdleGrace: 10 * time.Millisecond})
	c := dial(t, ts.addr)
	c.write("GET / HTTP/1.1\r\nHost: test\r\n\r\n")
	// Not StateActive: that comes before the handler, and a drain that
	// began in between would answer with "Connection: close" (also
	// correct, but not what this test is about).
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("request did not reach the handler")
	}

	done := ts.drainAsync(longCtx(t))
	close(release)
	c.response()
	c.expectEOF()
	ts.drained(done, drain.Stats{Conns: 1, ClosedIdle: 1})
}

type ctxKey struct{}

// The caller's Handler, ConnState and ConnContext stay in use.
func TestDrainKeepsCallerHooks(t *testing.T) {
	var (
		mu     sync.Mutex
		states []http.ConnState
	)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.Context().Value(ctxKey{}).(string))
		}),
		ConnState: func(c net.Conn, cs http.ConnState) {
			mu.Lock()
			states = append(states, cs)
			mu.Unlock()
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, "from ConnContext")
		},
	}
	ts := startServerWith(t, srv, drain.Options{IdleGrace: time.Millisecond}, nil)
	c := dial(t, ts.addr)
	resp := c.get("/")
	if body, _ := io.ReadAll(resp.Body); string(body) != "from ConnContext" {
		t.Fatalf("body %q: caller's handler or ConnContext not used", body)
	}
	r := ts.result(ts.drainAsync(longCtx(t)))
	if r.err != nil {
		t.Fatalf("Drain: %v", r.err)
	}
	ts.waitState(http.StateClosed)
	mu.Lock()
	defer mu.Unlock()
	want := []http.ConnState{http.StateNew, http.StateActive, http.StateIdle, http.StateClosed}
	if len(states) != len(want) {
		t.Fatalf("caller's ConnState saw %v, want %v", states, want)
	}
	for i := range want {
		if states[i] != want[i] {
			t.Fatalf("caller's ConnState saw %v, want %v", states, want)
		}
	}
}

// HTTP/2 over TLS: a stream in progress when the drain begins finishes
// after the GOAWAY of srv.Shutdown, on the same connection, and an
// IdleGrace shorter than the stream does not cut it.
func TestDrainHTTP2(t *testing.T) {
	certFile, keyFile, clientTLS, err := loadgen.WriteLoopbackCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// DialTLSContext below dials alone: the transport adds no "h2".
	clientTLS.NextProtos = []string{"h2", "http/1.1"}
	entered, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			close(entered)
			<-release
		}
		io.WriteString(w, r.Proto)
	})}
	shutdown := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shutdown) })
	ts := startServerWith(t, srv, drain.Options{IdleGrace: time.Millisecond}, func(s *drain.Server, ln net.Listener) error {
		return s.ServeTLS(ln, certFile, keyFile)
	})

	var (
		dialsMu sync.Mutex
		dials   int
	)
	tr := &http.Transport{
		TLSClientConfig:   clientTLS,
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialsMu.Lock()
			dials++
			dialsMu.Unlock()
			return (&tls.Dialer{Config: clientTLS}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: wait}
	get := func(path string) string {
		resp, err := hc.Get("https://" + ts.addr + path)
		if err != nil {
			t.Error(err)
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get("/"); got != "HTTP/2.0" {
		t.Fatalf("served over %q, want HTTP/2.0", got)
	}
	blocked := make(chan string)
	go func() { blocked <- get("/block") }()
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("request did not reach the handler")
	}

	done := ts.drainAsync(longCtx(t))
	select {
	case <-shutdown: // Shutdown sends the GOAWAY
	case <-time.After(wait):
		t.Fatal("Drain did not call Shutdown")
	}
	close(release)
	if got := <-blocked; got != "HTTP/2.0" {
		t.Fatalf("stream in progress got %q", got)
	}
	ts.drained(done, drain.Stats{Conns: 1})
	if dials != 1 {
		t.Fatalf("%d TLS connections, want 1", dials)
	}
}

// A TLS connection that the drain found before it had said it speaks
// HTTP/2 does not hold the drain up once it does: Shutdown's GOAWAY still
// comes, and the drain ends without waiting for its deadline.
func TestDrainHTTP2LateStart(t *testing.T) {
	certFile, keyFile, clientTLS, err := loadgen.WriteLoopbackCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: hello()}
	shutdown := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shutdown) })
	ts := startServerWith(t, srv, drain.Options{}, func(s *drain.Server, ln net.Listener) error {
		return s.ServeTLS(ln, certFile, keyFile)
	})
	clientTLS.NextProtos = []string{"h2"}
	// The handshake is over once Dial returns, so the server holds the
	// connection; it has not seen the HTTP/2 preface yet.
	tc, err := tls.Dial("tcp", ts.addr, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	done := ts.drainAsync(longCtx(t))

	// The client preface (RFC 9113, section 3.4): the magic string and an
	// empty SETTINGS frame. The server now knows it speaks HTTP/2.
	tc.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(tc, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-shutdown: // Drain went on to Shutdown and its GOAWAY
	case <-time.After(wait):
		t.Fatal("Drain did not call Shutdown")
	}
	tc.Close()
	ts.drained(done, drain.Stats{Conns: 1})
}

// HTTP/1.1 over TLS gets Connection: close during the drain, like
// plain HTTP/1.1.
func TestDrainTLSHTTP1(t *testing.T) {
	certFile, keyFile, clientTLS, err := loadgen.WriteLoopbackCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerWith(t, &http.Server{Handler: hello()}, drain.Options{IdleGrace: time.Hour}, func(s *drain.Server, ln net.Listener) error {
		return s.ServeTLS(ln, certFile, keyFile)
	})
	cfg := clientTLS.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", ts.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(wait))
	c := &client{t: t, conn: conn, br: bufio.NewReader(conn)}
	c.get("/")
	ts.waitState(http.StateIdle)
	done := ts.drainAsync(longCtx(t))
	if resp := c.get("/"); !resp.Close {
		t.Fatal("response during drain without Connection: close")
	}
	c.expectEOF()
	ts.drained(done, drain.Stats{Conns: 1})
}

func TestServerMisuse(t *testing.T) {
	ctx := longCtx(t)
	nilSrv := drain.NewServer(nil, drain.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nilSrv.Serve(ln); !errors.Is(err, drain.ErrNilServer) {
		t.Errorf("Serve on nil server: %v", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("Serve on nil server left the listener open")
	}
	if _, err := nilSrv.Drain(ctx); !errors.Is(err, drain.ErrNilServer) {
		t.Errorf("Drain on nil server: %v", err)
	}

	s := drain.NewServer(&http.Server{}, drain.Options{})
	if err := s.Serve(nil); !errors.Is(err, drain.ErrNilListener) {
		t.Errorf("Serve(nil): %v", err)
	}
	if _, err := s.Drain(ctx); !errors.Is(err, drain.ErrNotServing) {
		t.Errorf("Drain before Serve: %v", err)
	}
	ln1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln1); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after a Drain before Serve: %v", err)
	}

	ts := startServer(t, hello(), drain.Options{IdleGrace: time.Millisecond})
	dial(t, ts.addr).get("/")
	r := ts.result(ts.drainAsync(ctx))
	if r.err != nil {
		t.Fatalf("Drain: %v", r.err)
	}
	if _, err := ts.ds.Drain(ctx); !errors.Is(err, drain.ErrDrained) {
		t.Errorf("second Drain: %v", err)
	}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.ds.Serve(ln2); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Drain: %v", err)
	}
	if _, err := net.Dial("tcp", ln2.Addr().String()); err == nil {
		t.Error("Serve after Drain left the listener open")
	}
}
