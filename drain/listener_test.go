package drain_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/drain"
)

// lineServer echoes lines on every connection of l until the
// connection's Context is done, then finishes the line it is on and
// closes. Connections whose first line is "stubborn" ignore the drain.
func lineServer(t *testing.T, l *drain.Listener) (accepted <-chan struct{}) {
	acc := make(chan struct{}, 100)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			acc <- struct{}{}
			c := nc.(*drain.Conn)
			go serveLines(c)
		}
	}()
	return acc
}

func serveLines(c *drain.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	var stubborn atomic.Bool
	// Wake a blocked read when the drain begins: a line already being
	// received is finished, then the loop sees the done context.
	stop := context.AfterFunc(c.Context(), func() {
		if !stubborn.Load() {
			c.SetReadDeadline(time.Now())
		}
	})
	defer stop()
	for {
		line, err := br.ReadString('\n')
		if line == "stubborn\n" {
			stubborn.Store(true)
		}
		if line != "" {
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
		if c.Context().Err() != nil && !stubborn.Load() {
			return
		}
	}
}

func startListener(t *testing.T) (*drain.Listener, <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := drain.NewListener(ln, drain.Options{})
	t.Cleanup(func() { l.Close() })
	return l, lineServer(t, l)
}

func echo(t *testing.T, c *client, line string) {
	t.Helper()
	c.write(line)
	got, err := c.br.ReadString('\n')
	if err != nil || got != line {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

func waitAccepted(t *testing.T, acc <-chan struct{}) {
	t.Helper()
	select {
	case <-acc:
	case <-time.After(wait):
		t.Fatal("connection not accepted")
	}
}

// Drain cancels each connection's context, and returns once the program
// has closed them all; a connection that completes after the drain
// began is not refused.
func TestListenerDrain(t *testing.T) {
	l, acc := startListener(t)
	a := dial(t, l.Addr().String())
	b := dial(t, l.Addr().String())
	waitAccepted(t, acc)
	waitAccepted(t, acc)
	echo(t, a, "one\n")

	st, err := l.Drain(longCtx(t))
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if want := (drain.Stats{Conns: 2}); st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	select {
	case <-l.Draining():
	default:
		t.Fatal("Draining not closed")
	}
	a.expectEOF()
	b.expectEOF()
	if _, err := l.Accept(); err == nil {
		t.Fatal("Accept after Drain succeeded")
	}
	if _, err := l.Drain(longCtx(t)); !errors.Is(err, drain.ErrDrained) {
		t.Fatalf("second Drain: %v", err)
	}
}

// A connection the program does not close is closed at the deadline and
// counted.
func TestListenerCutsAtDeadline(t *testing.T) {
	l, acc := startListener(t)
	c := dial(t, l.Addr().String())
	waitAccepted(t, acc)
	echo(t, c, "stubborn\n")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	st, err := l.Drain(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain: %v, want %v", err, context.DeadlineExceeded)
	}
	if want := (drain.Stats{Conns: 1, CutActive: 1}); st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	c.expectEOF()
}

func TestListenerMisuse(t *testing.T) {
	l := drain.NewListener(nil, drain.Options{})
	if _, err := l.Accept(); !errors.Is(err, drain.ErrNilListener) {
		t.Errorf("Accept: %v", err)
	}
	if err := l.Close(); !errors.Is(err, drain.ErrNilListener) {
		t.Errorf("Close: %v", err)
	}
	if l.Addr() != nil {
		t.Errorf("Addr: %v", l.Addr())
	}
	if _, err := l.Drain(longCtx(t)); !errors.Is(err, drain.ErrNilListener) {
		t.Errorf("Drain: %v", err)
	}
}
