package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"time"
)

// client sends requests one at a time. It is used by one goroutine.
type client interface {
	do(ctx context.Context) (Outcome, error)
	close()
}

// heldConn is a client that holds one connection across requests and
// can tell when the server ended it (ModeLongLived).
type heldConn interface {
	client
	// endedIdle returns when and how the server ended the connection
	// while no request was in flight on it, once, and forgets the
	// connection; ok is false if it did not.
	endedIdle() (at time.Time, err error, ok bool)
	// endedByServer reports whether the last failed request failed
	// because the server ended the connection.
	endedByServer() bool
}

// clientFactory returns what makes the client numbered i of a load.
func clientFactory(u *url.URL, o Options) (func(i int) client, error) {
	dialer := &net.Dialer{Control: loopbackOnly}
	switch o.Mode {
	case ModeLine, ModeLongLived:
		return func(i int) client {
			return &lineClient{addr: u.Host, dialer: dialer, prefix: linePrefix(o.Body, i), timeout: o.Timeout, hold: o.Mode == ModeLongLived}
		}, nil
	case ModeDatagram:
		return func(i int) client {
			return &datagramClient{addr: u.Host, dialer: dialer, prefix: linePrefix(o.Body, i), timeout: o.Timeout}
		}, nil
	case ModeGRPC:
		return grpcClientFactory(u, o, dialer)
	case ModeKeepAlive, ModeNewConn:
		var tc *tls.Config
		if u.Scheme == "https" {
			tc = o.tlsConfig()
			tc.NextProtos = []string{"http/1.1"}
			if tc.ServerName == "" {
				tc.ServerName = u.Hostname()
			}
		}
		keepAlive := o.Mode == ModeKeepAlive
		req := rawRequest(u, o.Method, o.Body, keepAlive)
		return func(int) client {
			return &rawClient{
				addr:      u.Host,
				dialer:    dialer,
				tls:       tc,
				req:       req,
				keepAlive: keepAlive,
				timeout:   o.Timeout,
			}
		}, nil
	default: // ModeGoClient, ModeHTTP2
		tr := &http.Transport{
			DialContext:         dialer.DialContext,
			MaxIdleConnsPerHost: o.Conns,
			DisableCompression:  true,
			TLSClientConfig:     o.tlsConfig(),
		}
		if o.Mode == ModeHTTP2 {
			tr.ForceAttemptHTTP2 = true
		} else {
			// A non-nil empty map turns HTTP/2 off.
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		hc := &http.Client{Transport: tr, Timeout: o.Timeout}
		// One transport is shared by all clients of the load, as in a real
		// program; close drops its idle connections.
		return func(int) client {
			return &goClient{hc: hc, tr: tr, url: u.String(), method: o.Method, body: o.Body, h2: o.Mode == ModeHTTP2}
		}, nil
	}
}

// rawRequest builds the bytes of one HTTP/1.1 request.
func rawRequest(u *url.URL, method string, body []byte, keepAlive bool) []byte {
	var b bytes.Buffer
	b.WriteString(method + " " + u.RequestURI() + " HTTP/1.1\r\n")
	b.WriteString("Host: " + u.Host + "\r\n")
	b.WriteString("User-Agent: tableflip-loadgen\r\n")
	if !keepAlive {
		b.WriteString("Connection: close\r\n")
	}
	if len(body) > 0 || method == "POST" || method == "PUT" {
		b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// rawClient speaks HTTP/1.1 on the socket itself, so that nothing between
// it and the server retries or hides a failure.
type rawClient struct {
	addr      string
	dialer    *net.Dialer
	tls       *tls.Config
	req       []byte
	keepAlive bool
	timeout   time.Duration

	conn net.Conn
	wr   *watchReader
	br   *bufio.Reader
	// lastUse is when the connection's last response ended; idle how
	// long it had been unused when the last request went out.
	lastUse time.Time
	idle    time.Duration
}

// watchReader remembers the first error of the reader under it, so that a
// response that fails to parse can be told from one the peer cut short.
type watchReader struct {
	r   io.Reader
	err error
}

func (w *watchReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

func (c *rawClient) do(ctx context.Context) (Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	c.idle = 0
	if c.conn != nil {
		c.idle = time.Since(c.lastUse)
	}
	if c.conn == nil {
		conn, err := c.dialer.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return classify(err, Connect), err
		}
		if c.tls != nil {
			tc := tls.Client(conn, c.tls)
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				if o := classify(err, Connect); o == Timeout {
					return o, err
				}
				return Connect, err
			}
			conn = tc
		}
		c.conn = conn
		c.wr = &watchReader{r: conn}
		if c.br == nil {
			c.br = bufio.NewReader(c.wr)
		} else {
			c.br.Reset(c.wr)
		}
	}
	// The deadline makes a stuck read return; a stop of the load (ctx) is
	// turned into a deadline in the past.
	deadline, _ := ctx.Deadline()
	c.conn.SetDeadline(deadline)
	conn := c.conn
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	out, reuse, err := c.exchange()
	c.lastUse = time.Now()
	if out != OK || !reuse {
		c.close()
	}
	return out, err
}

func (c *rawClient) lastIdle() time.Duration { return c.idle }

// exchange writes one request and reads its response. reuse reports
// whether the connection may carry another request.
func (c *rawClient) exchange() (out Outcome, reuse bool, err error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return classify(err, Write), false, err
	}
	// A connection closed before the first byte of the response is the
	// classic keep-alive race; tell it apart from a response cut short.
	if _, err := c.br.Peek(1); err != nil {
		return classify(err, Other), false, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		if c.wr.err == nil {
			return Malformed, false, err
		}
		// The parser may have seen a partial line as a whole one.
		return cutShort(c.wr.err), false, c.wr.err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return cutShort(err), false, err
	}
	reuse = c.keepAlive && !resp.Close
	if resp.StatusCode >= 400 {
		return Status, reuse, errors.New(resp.Status)
	}
	return OK, reuse, nil
}

func (c *rawClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// goClient is net/http's client, with its own connection pool and retries.
type goClient struct {
	hc *http.Client
	tr *http.Transport
	// idle is how long the connection of the last request had been idle
	// in the pool (httptrace), 0 for a new one.
	idle   time.Duration
	url    string
	method string
	body   []byte
	h2     bool
}

func (c *goClient) do(ctx context.Context) (Outcome, error) {
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	c.idle = 0
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if info.WasIdle {
			c.idle = info.IdleTime
		}
	}})
	req, err := http.NewRequestWithContext(ctx, c.method, c.url, body)
	if err != nil {
		return Other, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return classify(err, Other), err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return cutShort(err), err
	case c.h2 && resp.ProtoMajor != 2:
		return Protocol, errors.New("answered with " + resp.Proto)
	case resp.StatusCode >= 400:
		return Status, errors.New(resp.Status)
	}
	return OK, nil
}

func (c *goClient) close() { c.tr.CloseIdleConnections() }

func (c *goClient) lastIdle() time.Duration { return c.idle }

// idler is a client that reuses connections and can say how long the
// connection of its last request had been idle before it.
type idler interface {
	lastIdle() time.Duration
}
