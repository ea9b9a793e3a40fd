// Package load drives HTTP clients against a server while it is drained
// or upgraded, and counts every request that did not get its response.
// It is the measuring instrument of drain's tests; it lives apart from
// them so that a command (tableflip check) can run the same clients.
//
// Four kinds of client, in the proportions of real traffic that an
// upgrade can hurt, each alternating GET and POST with a body (a POST is
// never retried by a client, so it shows every loss):
//
//   - KeepAlive: HTTP/1.1 on raw TCP, keep-alive, no retries: any EOF,
//     reset or missing response is a failure. A response with
//     "Connection: close" is honoured by reconnecting.
//   - NewConn: raw TCP, a new connection per request.
//   - GoClient: net/http's Client with HTTP/1.1 keep-alive.
//   - HTTP2: net/http's Client with HTTP/2 over TLS.
package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is a kind of client.
type Mode int

// The client modes; see the package documentation.
const (
	KeepAlive Mode = iota
	NewConn
	GoClient
	HTTP2
)

// Modes lists every Mode.
var Modes = []Mode{KeepAlive, NewConn, GoClient, HTTP2}

func (m Mode) String() string {
	switch m {
	case KeepAlive:
		return "keepalive"
	case NewConn:
		return "newconn"
	case GoClient:
		return "goclient"
	case HTTP2:
		return "http2"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// Timeout bounds one request, dial included: a server that never answers
// shows up as a failure, not a hang.
const Timeout = 10 * time.Second

// Handler answers the requests the clients send: GET /get?id=N with
// "get N", POST /post?id=N with "post N <length> <crc32>" of the body.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		switch r.Method {
		case http.MethodGet:
			io.WriteString(w, "get "+id)
		case http.MethodPost:
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "post %s %d %08x", id, len(body), crc32.ChecksumIEEE(body))
		default:
			http.Error(w, "bad method", http.StatusMethodNotAllowed)
		}
	})
}

func expected(post bool, id int, body []byte) string {
	if post {
		return fmt.Sprintf("post %d %d %08x", id, len(body), crc32.ChecksumIEEE(body))
	}
	return "get " + strconv.Itoa(id)
}

// Config describes one group of clients.
type Config struct {
	Mode    Mode
	Addr    string      // host:port of the server
	Clients int         // concurrent clients; zero means 1
	TLS     *tls.Config // HTTP2 only: trusts the server's certificate
	Body    int         // POST body size in bytes; zero means 512
}

// Result counts what the clients saw.
type Result struct {
	Mode     Mode
	Requests int64    // requests sent, failed ones included
	Failures int64    // requests without a correct response
	Errors   []string // the first few failures
}

// Run is a group of clients at work.
type Run struct {
	mode     Mode
	wg       sync.WaitGroup
	requests atomic.Int64
	failures atomic.Int64
	mu       sync.Mutex
	errs     []string
	closers  []func()
}

const maxErrors = 10

// Start starts the clients of cfg. They run until ctx is done, each
// finishing the request it is in; Wait then returns the counts.
func Start(ctx context.Context, cfg Config) *Run {
	r := &Run{mode: cfg.Mode}
	n := max(cfg.Clients, 1)
	bodySize := cfg.Body
	if bodySize == 0 {
		bodySize = 512
	}
	var do func(client int) requester
	switch cfg.Mode {
	case KeepAlive, NewConn:
		do = func(int) requester { return &rawClient{addr: cfg.Addr, closeEach: cfg.Mode == NewConn} }
	case GoClient, HTTP2:
		tr := &http.Transport{
			MaxIdleConnsPerHost: n,
			DisableCompression:  true,
			DialContext:         (&net.Dialer{Timeout: Timeout}).DialContext,
		}
		scheme, proto := "http", 1
		if cfg.Mode == HTTP2 {
			tr.TLSClientConfig = cfg.TLS
			tr.ForceAttemptHTTP2 = true
			scheme, proto = "https", 2
		}
		r.closers = append(r.closers, tr.CloseIdleConnections)
		hc := &http.Client{Transport: tr, Timeout: Timeout}
		do = func(int) requester {
			return &goClient{client: hc, base: scheme + "://" + cfg.Addr, proto: proto}
		}
	default:
		panic("load: unknown mode " + cfg.Mode.String())
	}
	for i := 0; i < n; i++ {
		c := do(i)
		body := bytes.Repeat([]byte{byte('a' + i%26)}, bodySize)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer c.close()
			for id := 0; ctx.Err() == nil; id++ {
				post := id%2 == 1
				r.requests.Add(1)
				if err := c.do(id, post, body); err != nil {
					r.fail(err)
				}
			}
		}()
	}
	return r
}

// Requests returns the number of requests sent so far.
func (r *Run) Requests() int64 { return r.requests.Load() }

// Wait waits for the clients to stop and returns what they saw.
func (r *Run) Wait() Result {
	r.wg.Wait()
	for _, f := range r.closers {
		f()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return Result{Mode: r.mode, Requests: r.requests.Load(), Failures: r.failures.Load(), Errors: r.errs}
}

func (r *Run) fail(err error) {
	r.failures.Add(1)
	r.mu.Lock()
	if len(r.errs) < maxErrors {
		r.errs = append(r.errs, err.Error())
	}
	r.mu.Unlock()
}

type requester interface {
	do(id int, post bool, body []byte) error
	close()
}

// rawClient speaks HTTP/1.1 on its own TCP connection and never retries.
type rawClient struct {
	addr      string
	closeEach bool // send "Connection: close": a new connection per request
	conn      net.Conn
	br        *bufio.Reader
	buf       bytes.Buffer
}

func (c *rawClient) do(id int, post bool, body []byte) error {
	err := c.roundTrip(id, post, body)
	if err != nil && c.conn != nil {
		c.close()
	}
	return err
}

func (c *rawClient) roundTrip(id int, post bool, body []byte) error {
	reused := c.conn != nil
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, Timeout)
		if err != nil {
			return err
		}
		c.conn = conn
		c.br = bufio.NewReader(conn)
	}
	c.buf.Reset()
	method, path := "GET", "/get"
	if post {
		method, path = "POST", "/post"
	}
	fmt.Fprintf(&c.buf, "%s %s?id=%d HTTP/1.1\r\nHost: %s\r\n", method, path, id, c.addr)
	if c.closeEach {
		c.buf.WriteString("Connection: close\r\n")
	}
	if post {
		fmt.Fprintf(&c.buf, "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n", len(body))
	}
	c.buf.WriteString("\r\n")
	if post {
		c.buf.Write(body)
	}
	c.conn.SetDeadline(time.Now().Add(Timeout))
	if _, err := c.conn.Write(c.buf.Bytes()); err != nil {
		return fmt.Errorf("%s id=%d reused=%v: write: %w", method, id, reused, err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return fmt.Errorf("%s id=%d reused=%v: read response: %w", method, id, reused, err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("%s id=%d: read body: %w", method, id, err)
	}
	if resp.Close || c.closeEach {
		c.close()
	}
	return check(resp, got, post, id, body, 1)
}

func (c *rawClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.br = nil, nil
	}
}

// goClient uses net/http's client, which retries what it may.
type goClient struct {
	client *http.Client
	base   string
	proto  int
}

func (c *goClient) do(id int, post bool, body []byte) error {
	var (
		req *http.Request
		err error
	)
	if post {
		req, err = http.NewRequest(http.MethodPost, c.base+"/post?id="+strconv.Itoa(id), bytes.NewReader(body))
	} else {
		req, err = http.NewRequest(http.MethodGet, c.base+"/get?id="+strconv.Itoa(id), nil)
	}
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("%s id=%d: read body: %w", req.Method, id, err)
	}
	return check(resp, got, post, id, body, c.proto)
}

func (c *goClient) close() {}

func check(resp *http.Response, got []byte, post bool, id int, body []byte, proto int) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("id=%d: status %s: %s", id, resp.Status, strings.TrimSpace(string(got)))
	}
	if resp.ProtoMajor != proto {
		return fmt.Errorf("id=%d: got %s, want HTTP/%d", id, resp.Proto, proto)
	}
	if want := expected(post, id, body); string(got) != want {
		return fmt.Errorf("id=%d: body %q, want %q", id, got, want)
	}
	return nil
}
