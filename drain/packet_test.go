package drain_test

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/drain"
)

// udpClient is a connected UDP socket to addr.
func udpClient(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	return c
}

func send(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func receive(t *testing.T, c net.Conn, want string) {
	t.Helper()
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != want {
		t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
	}
}

func listenUDP(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

type handled struct {
	p    string
	from net.Addr
}

// heldEcho is a handler that says what it got and answers only once
// release is closed.
func heldEcho(got chan<- handled, release <-chan struct{}) drain.PacketHandler {
	return func(conn net.PacketConn, p []byte, from net.Addr) {
		got <- handled{string(p), from}
		<-release
		conn.WriteTo(p, from)
	}
}

// Drain stops reading, answers the datagram being handled, and closes
// the socket.
func TestPacketServerDrainAnswersWhatItRead(t *testing.T) {
	pc := listenUDP(t)
	got := make(chan handled, 1)
	release := make(chan struct{})
	srv := drain.NewPacketServer(heldEcho(got, release), drain.Options{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	c := udpClient(t, pc.LocalAddr())
	send(t, c, "first")
	<-got

	done := make(chan error, 1)
	var st drain.Stats
	go func() {
		var err error
		st, err = srv.Drain(context.Background())
		done <- err
	}()
	<-srv.Draining()
	close(release)
	receive(t, c, "first")
	if err := <-done; err != nil || st != (drain.Stats{Conns: 1}) {
		t.Errorf("Drain = %+v, %v; want one datagram handled, nothing cut", st, err)
	}
	if err := <-served; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve = %v, want net.ErrClosed", err)
	}
	if _, err := pc.WriteTo([]byte("x"), c.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Drain: %v, want the socket closed", err)
	}
}

// What the old generation has not read stays in the socket's queue for
// the process that shares the socket.
func TestPacketServerDrainLeavesQueueToSharer(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no socket duplication")
	}
	old := listenUDP(t)
	f, err := old.(*net.UDPConn).File() // a duplicate, as the next generation holds
	if err != nil {
		t.Fatal(err)
	}
	next, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()

	echo := func(conn net.PacketConn, p []byte, from net.Addr) { conn.WriteTo(p, from) }
	oldSrv := drain.NewPacketServer(echo, drain.Options{})
	served := make(chan error, 1)
	go func() { served <- oldSrv.Serve(old) }()
	c := udpClient(t, old.LocalAddr())
	send(t, c, "before")
	receive(t, c, "before")
	if _, err := oldSrv.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-served
	// Nobody reads now: the datagrams wait in the queue.
	for _, m := range []string{"a", "b", "c"} {
		send(t, c, m)
	}
	nextSrv := drain.NewPacketServer(echo, drain.Options{})
	go nextSrv.Serve(next)
	defer nextSrv.Close()
	for _, m := range []string{"a", "b", "c"} {
		receive(t, c, m)
	}
}

// At the deadline, Drain closes the socket under the handlers still
// running and counts them as cut.
func TestPacketServerDrainCutsAtDeadline(t *testing.T) {
	pc := listenUDP(t)
	got := make(chan handled, 2)
	release := make(chan struct{})
	srv := drain.NewPacketServer(heldEcho(got, release), drain.Options{})
	for range 2 {
		go srv.Serve(pc)
	}
	c := udpClient(t, pc.LocalAddr())
	send(t, c, "one")
	send(t, c, "two")
	<-got
	<-got
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var st drain.Stats
	go func() {
		var err error
		st, err = srv.Drain(ctx)
		done <- err
	}()
	<-srv.Draining()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || st != (drain.Stats{Conns: 2, CutActive: 2}) {
		t.Errorf("Drain = %+v, %v; want 2 handlers cut and context.Canceled", st, err)
	}
	close(release)
}

// Close stops at once: it does not wait for handlers.
func TestPacketServerClose(t *testing.T) {
	pc := listenUDP(t)
	got := make(chan handled, 1)
	release := make(chan struct{})
	defer close(release)
	srv := drain.NewPacketServer(heldEcho(got, release), drain.Options{})
	go srv.Serve(pc)
	send(t, udpClient(t, pc.LocalAddr()), "x")
	<-got
	if err := srv.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	select {
	case <-srv.Draining():
	default:
		t.Error("Draining not closed by Close")
	}
	if err := srv.Serve(listenUDP(t)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after Close = %v, want net.ErrClosed", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestPacketServerMisuse(t *testing.T) {
	ctx := context.Background()
	if err := drain.NewPacketServer(nil, drain.Options{}).Serve(listenUDP(t)); err != drain.ErrNilHandler {
		t.Errorf("Serve with a nil handler = %v, want ErrNilHandler", err)
	}
	if _, err := drain.NewPacketServer(nil, drain.Options{}).Drain(ctx); err != drain.ErrNilHandler {
		t.Errorf("Drain with a nil handler = %v, want ErrNilHandler", err)
	}
	got := make(chan handled, 1)
	release := make(chan struct{})
	close(release)
	srv := drain.NewPacketServer(heldEcho(got, release), drain.Options{})
	if err := srv.Serve(nil); err != drain.ErrNilPacketConn {
		t.Errorf("Serve(nil) = %v, want ErrNilPacketConn", err)
	}
	if _, err := srv.Drain(ctx); err != drain.ErrNotServing {
		t.Errorf("Drain before Serve = %v, want ErrNotServing", err)
	}
	pc := listenUDP(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	send(t, udpClient(t, pc.LocalAddr()), "x")
	<-got // Serve has begun
	if _, err := srv.Drain(ctx); err != nil {
		t.Errorf("Drain = %v", err)
	}
	if _, err := srv.Drain(ctx); err != drain.ErrDrained {
		t.Errorf("second Drain = %v, want ErrDrained", err)
	}
	if err := <-served; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve = %v, want net.ErrClosed", err)
	}
	// A read that fails for another reason ends Serve with its error.
	pc = listenUDP(t)
	pc.SetReadDeadline(time.Unix(1, 0))
	if err := drain.NewPacketServer(heldEcho(got, release), drain.Options{}).Serve(pc); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Serve with a deadline of the program's = %v, want it", err)
	}
}
