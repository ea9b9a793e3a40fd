//go:build linux

package realsystemd

import (
	"context"
	"errors"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// InNetns runs f on a new goroutine whose OS thread has joined the
// System's network namespace, and waits for it to return. Sockets that f
// creates belong to that namespace (and stay there wherever they are used
// from later): f can reach the servers on the namespace's loopback.
//
// The thread is never handed back to the Go runtime: it ends with the
// goroutine, so no other goroutine ever runs in the namespace by mistake.
// Goroutines that f starts run on other threads, outside.
func (s *System) InNetns(f func()) error {
	if s.closed.Load() {
		return errors.New("realsystemd: system is closed")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		if err := unix.Setns(int(s.netns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

// Dial connects to address on network from inside the System's network
// namespace. It suits net/http's Transport.DialContext.
func (s *System) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	var err error
	if nerr := s.InNetns(func() {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, address)
	}); nerr != nil {
		return nil, nerr
	}
	return conn, err
}
