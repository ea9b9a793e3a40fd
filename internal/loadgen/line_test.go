package loadgen

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// lineServer echoes lines over TCP on loopback. For the i-th line
// (counting from 1 over all connections) it calls bad(i, line, conn) and,
// when that returns true, closes the connection instead of answering.
func lineServer(t *testing.T, bad func(i int64, line string, c *net.TCPConn) bool) string {
	t.Helper()
	var n atomic.Int64
	return "tcp://" + serveConns(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if bad != nil && bad(n.Add(1), line, c) {
				return
			}
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	})
}

func TestLineModes(t *testing.T) {
	url := lineServer(t, nil)
	for _, mode := range ModesFor("tcp") {
		t.Run(string(mode), func(t *testing.T) {
			// One client, so that none is in flight at the limit.
			res, err := Run(context.Background(), Options{URL: url, Mode: mode, Conns: 1, MaxRequests: 60, Pace: time.Microsecond})
			if err != nil {
				t.Fatal(err)
			}
			if f := res.Failures(); len(f) != 0 || len(res.Records) != 60 {
				t.Errorf("%d records, failures %v; want 60 and none", len(res.Records), f)
			}
		})
	}
}

func TestLineFailureKinds(t *testing.T) {
	tests := []struct {
		name string
		bad  func(c *net.TCPConn)
		want Outcome
	}{
		{"close", func(c *net.TCPConn) {}, EOF},
		{"reset", func(c *net.TCPConn) { c.SetLinger(0) }, Reset},
		{"half a line", func(c *net.TCPConn) { io.WriteString(c, "tableflip-") }, Truncated},
		{"another line", func(c *net.TCPConn) { io.WriteString(c, "not yours\n") }, Malformed},
	}
	for _, tt := range tests {
		for _, mode := range ModesFor("tcp") {
			t.Run(tt.name+"/"+string(mode), func(t *testing.T) {
				// Every third exchange fails.
				url := lineServer(t, func(i int64, _ string, c *net.TCPConn) bool {
					if i%3 != 0 {
						return false
					}
					tt.bad(c)
					return true
				})
				res, err := Run(context.Background(), Options{URL: url, Mode: mode, Conns: 1, MaxRequests: 30, Pace: time.Microsecond})
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Records) != 30 {
					t.Fatalf("%d records, want 30", len(res.Records))
				}
				if f := res.Failures(); f[tt.want] != 10 || len(f) != 1 {
					t.Errorf("failures %v, want 10 %v", f, tt.want)
				}
				for i, r := range res.Records {
					if want := (i+1)%3 == 0; want != (r.Outcome != OK) {
						t.Errorf("exchange %d: %v", i+1, r.Outcome)
					}
					// Only a held connection can be ended by the
					// server, and a line not sent back is the client's
					// own reason to drop it.
					if want := mode == ModeLongLived && r.Outcome != OK && tt.want != Malformed; r.Ended != want {
						t.Errorf("exchange %d (%v): Ended %v, want %v", i+1, r.Outcome, r.Ended, want)
					}
				}
			})
		}
	}
}

// A long-lived connection that the server closes between two exchanges
// is recorded, with the time it ended, and replaced.
func TestLongLivedEnded(t *testing.T) {
	// The server closes each connection once it has answered its second
	// line. The client sees that end while it paces (a Cut), or, if it
	// has not noticed yet, as the failure of its next exchange: either
	// way the record says the server ended the connection.
	url := lineServer(t, func(i int64, line string, c *net.TCPConn) bool {
		if i%2 == 1 {
			return false
		}
		io.WriteString(c, line)
		return true
	})
	l, err := Start(context.Background(), Options{URL: url, Mode: ModeLongLived, Conns: 1, MaxRequests: 12, Pace: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	<-l.Done()
	res := l.Stop()
	ended := 0
	for i, r := range res.Records {
		switch {
		case r.Outcome == OK && !r.Ended:
		case r.Ended && (r.Outcome == Cut || r.Outcome == EOF || r.Outcome == Reset || r.Outcome == Write):
			ended++
		default:
			t.Errorf("record %d: %v, ended %v; want ok, or an end the server brought", i, r.Outcome, r.Ended)
		}
		if r.Outcome == Cut && r.Latency != 0 {
			t.Errorf("record %d: a cut with latency %v", i, r.Latency)
		}
	}
	if ended < 3 {
		t.Errorf("%d ended connections in %d records, want at least 3", ended, len(res.Records))
	}
	if c := l.Counts(); c.Failed != 0 || c.Ended != int64(ended) {
		t.Errorf("Counts %+v, want 0 failed and %d ended", c, ended)
	}
}

// udpServer echoes datagrams on loopback; answer decides, for the i-th
// datagram (from 1), whether to answer it now.
func udpServer(t *testing.T, answer func(i int64, b []byte, pc net.PacketConn, from net.Addr) bool) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for i := int64(1); ; i++ {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if answer == nil || answer(i, buf[:n], pc, from) {
				pc.WriteTo(buf[:n], from)
			}
		}
	}()
	return "udp://" + pc.LocalAddr().String()
}

func TestDatagram(t *testing.T) {
	url := udpServer(t, nil)
	res, err := Run(context.Background(), Options{URL: url, Conns: 4, MaxRequests: 200, Body: []byte("ping")})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != ModeDatagram || len(res.Records) != 200 || len(res.Failures()) != 0 {
		t.Errorf("mode %s, %d records, failures %v; want datagram, 200, none", res.Mode, len(res.Records), res.Failures())
	}
}

// A datagram never answered is lost (Timeout); its answer, if it comes
// late, is not taken for the next one's.
func TestDatagramLostAndLate(t *testing.T) {
	var held []byte
	var heldFrom net.Addr
	url := udpServer(t, func(i int64, b []byte, pc net.PacketConn, from net.Addr) bool {
		switch i {
		case 2: // never answered
			return false
		case 4: // answered after the fifth
			held, heldFrom = append([]byte(nil), b...), from
			return false
		case 5:
			pc.WriteTo(held, heldFrom)
		}
		return true
	})
	res, err := Run(context.Background(), Options{URL: url, Conns: 1, MaxRequests: 6, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range res.Records {
		got = append(got, r.Outcome.String())
	}
	if g := strings.Join(got, ","); g != "ok,timeout,ok,timeout,ok,ok" {
		t.Errorf("records %s, want ok,timeout,ok,timeout,ok,ok", g)
	}
	if e := res.Examples[Timeout]; !strings.Contains(e, "no answer to datagram 2 within 500ms") {
		t.Errorf("timeout example %q", e)
	}
}

// A datagram in flight when the load stops is waited for: stopping the
// load must not hide a loss, nor count an answer that comes as lost.
func TestDatagramInFlightAtStop(t *testing.T) {
	for _, answered := range []bool{true, false} {
		name := map[bool]string{true: "answered", false: "lost"}[answered]
		t.Run(name, func(t *testing.T) {
			got3 := make(chan struct{})
			release := make(chan struct{})
			url := udpServer(t, func(i int64, b []byte, pc net.PacketConn, from net.Addr) bool {
				if i != 3 {
					return true
				}
				close(got3)
				<-release
				return answered
			})
			ctx, cancel := context.WithCancel(context.Background())
			l, err := Start(ctx, Options{URL: url, Conns: 1, Timeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			<-got3
			cancel() // the load ends while datagram 3 is in flight
			close(release)
			res := l.Stop()
			want := Timeout
			if answered {
				want = OK
			}
			if n := len(res.Records); n != 3 || res.Records[2].Outcome != want {
				t.Errorf("records %+v, want 3 with the last %v", res.Records, want)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	for _, url := range []string{lineServer(t, nil), udpServer(t, nil)} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := Probe(ctx, Options{URL: url, Timeout: time.Second}); err != nil {
			t.Errorf("Probe(%s): %v", url, err)
		}
		cancel()
	}
	// A server that closes every connection without an answer is not.
	wrong := lineServer(t, func(int64, string, *net.TCPConn) bool { return true })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := Probe(ctx, Options{URL: wrong}); err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Errorf("Probe of a server that never answers: %v, want EOF", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := Probe(ctx, Options{URL: "tcp://" + addr}); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("Probe of a closed port: %v, want connection refused", err)
	}
}

func TestLineOptionsRejected(t *testing.T) {
	for _, o := range []Options{
		{URL: "tcp://127.0.0.1:7", Mode: ModeKeepAlive},
		{URL: "udp://127.0.0.1:7", Mode: ModeLine},
		{URL: "http://127.0.0.1:7/", Mode: ModeDatagram},
		{URL: "tcp://127.0.0.1:7", Body: []byte("two\nlines")},
		{URL: "tcp://127.0.0.1:7", Method: "POST"},
		{URL: "udp://127.0.0.1:7", Body: make([]byte, MaxDatagram+1)},
		{URL: "udp://192.0.2.1:7"},
		{URL: "tcp://127.0.0.1"},
	} {
		if err := o.Validate(); err == nil || !strings.HasPrefix(err.Error(), "loadgen: ") {
			t.Errorf("Validate(%s %s) = %v, want a loadgen error", o.URL, o.Mode, err)
		}
	}
	for _, scheme := range []string{"http", "https", "tcp", "udp"} {
		o := Options{URL: scheme + "://127.0.0.1:7"}
		if err := o.Validate(); err != nil {
			t.Errorf("%s: %v", scheme, err)
		}
	}
}
