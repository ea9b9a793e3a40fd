package drain_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/drain"
)

// BenchmarkServe measures steady-state HTTP/1.1 keep-alive requests
// through a bare http.Server and through drain.Server, in the same run:
//
//	go test -run '^$' -bench Serve -count 10 ./drain/
//
// Each parallel client holds one connection and sends GETs back to back;
// req/s is the figure to compare.
func BenchmarkServe(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	b.Run("bare", func(b *testing.B) {
		benchServe(b, func(srv *http.Server, ln net.Listener) func() {
			go srv.Serve(ln)
			return func() { srv.Close() }
		}, h)
	})
	b.Run("drain", func(b *testing.B) {
		benchServe(b, func(srv *http.Server, ln net.Listener) func() {
			ds := drain.NewServer(srv, drain.Options{})
			go ds.Serve(ln)
			return func() { srv.Close() }
		}, h)
	})
}

func benchServe(b *testing.B, serve func(*http.Server, net.Listener) (stop func()), h http.Handler) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	stop := serve(&http.Server{Handler: h}, ln)
	defer stop()
	addr := ln.Addr().String()
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		for pb.Next() {
			if _, err := conn.Write(req); err != nil {
				b.Error(err)
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				b.Error(err)
				return
			}
			resp.Body.Close()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}
