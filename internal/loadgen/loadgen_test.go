package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func echoHandler(t *testing.T, wantBody string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil && r.Context().Err() != nil {
			// The client gave the request up: the load reached its
			// limit and stopped the requests in flight.
			return
		}
		if err != nil || string(b) != wantBody {
			t.Errorf("server got body %q, %v; want %q", b, err, wantBody)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Write([]byte("hello\n"))
	})
}

func tlsConfigFor(srv *httptest.Server) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tls.Config{RootCAs: pool}
}

func TestModes(t *testing.T) {
	// ModeGRPC has a test of its own.
	for _, mode := range []Mode{ModeKeepAlive, ModeNewConn, ModeGoClient, ModeHTTP2} {
		for _, method := range []string{"GET", "POST"} {
			for _, useTLS := range []bool{false, true} {
				if mode == ModeHTTP2 && !useTLS {
					continue
				}
				name := string(mode) + "/" + method
				if useTLS {
					name += "/tls"
				}
				t.Run(name, func(t *testing.T) {
					body := ""
					if method == "POST" {
						body = "some body"
					}
					srv := httptest.NewUnstartedServer(echoHandler(t, body))
					srv.Config.ErrorLog = log.New(io.Discard, "", 0)
					var opts Options
					if useTLS {
						srv.EnableHTTP2 = true
						srv.StartTLS()
						opts.TLSConfig = tlsConfigFor(srv)
					} else {
						srv.Start()
					}
					defer srv.Close()
					opts.URL = srv.URL + "/path?q=1"
					opts.Mode = mode
					opts.Method = method
					opts.Body = []byte(body)
					opts.Conns = 4
					opts.MaxRequests = 200
					res, err := Run(context.Background(), opts)
					if err != nil {
						t.Fatal(err)
					}
					if !res.LimitReached {
						t.Errorf("LimitReached = false, want true")
					}
					if n := len(res.Records); n == 0 || n > 200 {
						t.Errorf("%d records, want 1 to 200", n)
					}
					if f := res.Failures(); len(f) != 0 {
						t.Errorf("failures: %v", f)
					}
					for i := 1; i < len(res.Records); i++ {
						if res.Records[i].Start < res.Records[i-1].Start {
							t.Fatalf("records not sorted at %d", i)
						}
					}
				})
			}
		}
	}
}

// serveConns accepts TCP connections on loopback and serves each with
// handle, which need not close it, until the test ends; it returns the
// address.
func serveConns(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

// misbehavingServer serves raw HTTP/1.1 on loopback; for the i-th request
// (counting from 1 over all connections) it calls bad(i, conn) and, when
// that returns true, closes the connection without anything more.
func misbehavingServer(t *testing.T, bad func(i int64, c *net.TCPConn) bool) string {
	t.Helper()
	var n atomic.Int64
	return "http://" + serveConns(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if bad(n.Add(1), c) {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
		}
	}) + "/"
}

func TestFailureKinds(t *testing.T) {
	tests := []struct {
		name string
		bad  func(c *net.TCPConn)
		want Outcome
	}{
		{"close", func(c *net.TCPConn) {}, EOF},
		{"reset", func(c *net.TCPConn) { c.SetLinger(0) }, Reset},
		{"truncated", func(c *net.TCPConn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
		}, Truncated},
		{"half status line", func(c *net.TCPConn) { io.WriteString(c, "HTTP/1.1 20") }, Truncated},
		{"malformed", func(c *net.TCPConn) { io.WriteString(c, "garbage\r\n\r\n") }, Malformed},
		{"status", func(c *net.TCPConn) {
			io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		}, Status},
	}
	for _, tt := range tests {
		for _, mode := range []Mode{ModeKeepAlive, ModeNewConn} {
			t.Run(tt.name+"/"+string(mode), func(t *testing.T) {
				// Every third request fails.
				url := misbehavingServer(t, func(i int64, c *net.TCPConn) bool {
					if i%3 != 0 {
						return false
					}
					tt.bad(c)
					return true
				})
				res, err := Run(context.Background(), Options{URL: url, Mode: mode, Conns: 1, MaxRequests: 30})
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Records) != 30 {
					t.Fatalf("%d records, want 30", len(res.Records))
				}
				f := res.Failures()
				if f[tt.want] != 10 || len(f) != 1 {
					t.Errorf("failures %v, want 10 %v", f, tt.want)
				}
				for i, r := range res.Records {
					if want := (i+1)%3 == 0; want != (r.Outcome != OK) {
						t.Errorf("request %d: %v", i+1, r.Outcome)
					}
				}
			})
		}
	}
}

func TestGoClientPOSTFailure(t *testing.T) {
	// net/http's client does not retry a POST whose connection was closed
	// after the request was written: it must show as a failure.
	url := misbehavingServer(t, func(i int64, c *net.TCPConn) bool { return i%2 == 0 })
	res, err := Run(context.Background(), Options{URL: url, Mode: ModeGoClient, Conns: 1, MaxRequests: 10, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	f := res.Failures()
	if f[EOF]+f[Reset]+f[Truncated] == 0 || f[Other] != 0 {
		t.Errorf("failures %v, want some eof and no other", f)
	}
}

func TestTimeout(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	url := misbehavingServer(t, func(i int64, c *net.TCPConn) bool { <-hang; return true })
	res, err := Run(context.Background(), Options{URL: url, Conns: 1, MaxRequests: 1, Timeout: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != 1 || res.Records[0].Outcome != Timeout {
		t.Errorf("records %v, want one timeout", res.Records)
	}
}

func TestConnectFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res, err := Run(context.Background(), Options{URL: "http://" + addr + "/", Conns: 2, MaxRequests: 4})
	if err != nil {
		t.Fatal(err)
	}
	if f := res.Failures(); f[Connect] != len(res.Records) || len(res.Records) == 0 {
		t.Errorf("failures %v of %d records, want all connect", f, len(res.Records))
	}
}

func TestStopDoesNotCountAbortedRequests(t *testing.T) {
	var served atomic.Int64
	enough := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if served.Add(1) == 20 {
			close(enough)
		}
		if served.Load() > 20 {
			<-release // hold requests in flight until the load is stopped
		}
	}))
	defer srv.Close()
	defer close(release)
	l, err := Start(context.Background(), Options{URL: srv.URL, Conns: 4})
	if err != nil {
		t.Fatal(err)
	}
	<-enough
	res := l.Stop()
	if f := res.Failures(); len(f) != 0 {
		t.Errorf("failures %v after Stop, want none", f)
	}
	if res.LimitReached {
		t.Error("LimitReached = true after Stop")
	}
	if c := l.Counts(); c.Requests != int64(len(res.Records)) || c.Failed != 0 {
		t.Errorf("Counts %+v, want %d requests", c, len(res.Records))
	}
	if l.Stop() != res {
		t.Error("second Stop returned a different result")
	}
}

func TestOptionsRejected(t *testing.T) {
	for _, o := range []Options{
		{URL: "http://192.0.2.1:80/"},
		{URL: "http://example.com:80/"},
		{URL: "http://127.0.0.1/"},
		{URL: "ftp://127.0.0.1:21/"},
		{URL: "http://127.0.0.1:80/", Mode: ModeHTTP2},
		{URL: "http://127.0.0.1:80/", Mode: "carrier-pigeon"},
	} {
		if _, err := Start(context.Background(), o); err == nil || !strings.HasPrefix(err.Error(), "loadgen: ") {
			t.Errorf("Start(%+v) = %v, want a loadgen error", o, err)
		}
	}
}

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i))
	}
	got := Summarize(ds)
	want := Latency{Count: 100, Median: 50, P99: 99, Max: 100}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if ds[0] != 100 {
		t.Error("Summarize modified its input")
	}
	if (Summarize(nil) != Latency{}) {
		t.Error("Summarize(nil) not zero")
	}
	if got := Summarize([]time.Duration{7}); got.Median != 7 || got.P99 != 7 {
		t.Errorf("Summarize one = %+v", got)
	}
}

func TestOutcomeText(t *testing.T) {
	for _, o := range Outcomes() {
		b, _ := o.MarshalText()
		var back Outcome
		if err := back.UnmarshalText(b); err != nil || back != o {
			t.Errorf("%v round-trips to %v, %v", o, back, err)
		}
	}
}
