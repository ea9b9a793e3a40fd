// Package tabletest provides a test double for *tableflip.Upgrader, so that
// code which takes an upgrader can be tested without starting processes.
//
// Write the code against an interface that *tableflip.Upgrader satisfies,
// such as [Interface] or a smaller one of your own, and pass a
// *tabletest.Upgrader in tests:
//
//	func serve(upg tabletest.Interface) error { ... }
//
//	func TestServe(t *testing.T) {
//		upg := tabletest.New()
//		go serve(upg)
//		...
//		upg.Stop() // serve sees Exit closed
//	}
//
// The name does not shadow the standard library's testing package, as
// cloudflare/tableflip's did.
package tabletest

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"

	"github.com/seed589fcc9d/tableflip"
)

// Interface is the method set of *tableflip.Upgrader, including its
// embedded *tableflip.Fds. Both *tableflip.Upgrader and *Upgrader satisfy
// it; the package's tests check that at compile time.
type Interface interface {
	Ready() error
	Exit() <-chan struct{}
	Stop()
	Upgrade() error
	WaitForParent(ctx context.Context) error
	HasParent() bool

	Listen(network, addr string) (net.Listener, error)
	ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error)
	Listener(network, addr string) (net.Listener, error)
	AddListener(network, addr string, ln tableflip.Listener) error
	ListenPacket(network, addr string) (net.PacketConn, error)
	ListenPacketWithCallback(network, addr string, callback func(network, addr string) (net.PacketConn, error)) (net.PacketConn, error)
	PacketConn(network, addr string) (net.PacketConn, error)
	AddPacketConn(network, addr string, conn tableflip.PacketConn) error
	Conn(network, addr string) (net.Conn, error)
	AddConn(network, addr string, conn tableflip.Conn) error
	File(name string) (*os.File, error)
	Files() ([]*os.File, error)
	AddFile(name string, file *os.File) error
}

// Upgrader is a first generation that never has a parent: Listen and
// ListenPacket create fresh sockets, the Add methods accept and forget,
// and the lookups of inherited sockets find nothing. Upgrade does what
// UpgradeFunc says, so a test can make it succeed (Exit is then closed, as
// after a real upgrade) or fail with any error.
type Upgrader struct {
	// UpgradeFunc is called by Upgrade once Ready has been called. Nil
	// means success.
	UpgradeFunc func() error

	mu        sync.Mutex
	ready     bool
	readyOnce sync.Once
	readyC    chan struct{}
	upgrades  int
	exitOnce  sync.Once
	exitC     chan struct{}
	lc        net.ListenConfig
	isStopped bool
}

// New returns an Upgrader that is not ready yet.
func New() *Upgrader {
	return &Upgrader{exitC: make(chan struct{}), readyC: make(chan struct{})}
}

// Ready marks the Upgrader ready.
func (u *Upgrader) Ready() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ready = true
	u.readyOnce.Do(func() { close(u.readyC) })
	return nil
}

// Readied is closed when Ready is first called, so that a test can wait
// for the code under test to be ready.
func (u *Upgrader) Readied() <-chan struct{} { return u.readyC }

// IsReady reports whether Ready was called.
func (u *Upgrader) IsReady() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.ready
}

// Exit is closed after Stop or a successful Upgrade.
func (u *Upgrader) Exit() <-chan struct{} { return u.exitC }

// Stop closes Exit. Further upgrades fail with tableflip.ErrStopped.
func (u *Upgrader) Stop() {
	u.mu.Lock()
	u.isStopped = true
	u.mu.Unlock()
	u.exitOnce.Do(func() { close(u.exitC) })
}

// Upgrade fails as the real one does before Ready, after Stop and after a
// successful upgrade; otherwise it calls UpgradeFunc, and closes Exit if
// that returns nil.
func (u *Upgrader) Upgrade() error {
	u.mu.Lock()
	switch {
	case u.isStopped:
		u.mu.Unlock()
		return tableflip.ErrStopped
	case !u.ready:
		u.mu.Unlock()
		return tableflip.ErrNotReady
	}
	select {
	case <-u.exitC:
		u.mu.Unlock()
		return tableflip.ErrUpgraded
	default:
	}
	u.upgrades++
	fn := u.UpgradeFunc
	u.mu.Unlock()

	if fn != nil {
		if err := fn(); err != nil {
			return err
		}
	}
	u.exitOnce.Do(func() { close(u.exitC) })
	return nil
}

// Upgrades returns how many upgrades were attempted.
func (u *Upgrader) Upgrades() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.upgrades
}

// WaitForParent returns nil at once: there is no parent.
func (u *Upgrader) WaitForParent(context.Context) error { return nil }

// HasParent returns false.
func (u *Upgrader) HasParent() bool { return false }

// Listen creates a new listener.
func (u *Upgrader) Listen(network, addr string) (net.Listener, error) {
	return u.lc.Listen(context.Background(), network, addr)
}

// ListenWithCallback calls callback to create a new listener.
func (u *Upgrader) ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	return callback(network, addr)
}

// Listener returns nil: nothing is inherited.
func (u *Upgrader) Listener(network, addr string) (net.Listener, error) { return nil, nil }

// AddListener accepts ln and forgets it.
func (u *Upgrader) AddListener(network, addr string, ln tableflip.Listener) error {
	return check(ln)
}

// ListenPacket creates a new packet conn.
func (u *Upgrader) ListenPacket(network, addr string) (net.PacketConn, error) {
	return u.lc.ListenPacket(context.Background(), network, addr)
}

// ListenPacketWithCallback calls callback to create a new packet conn.
func (u *Upgrader) ListenPacketWithCallback(network, addr string, callback func(network, addr string) (net.PacketConn, error)) (net.PacketConn, error) {
	return callback(network, addr)
}

// PacketConn returns nil: nothing is inherited.
func (u *Upgrader) PacketConn(network, addr string) (net.PacketConn, error) { return nil, nil }

// AddPacketConn accepts conn and forgets it.
func (u *Upgrader) AddPacketConn(network, addr string, conn tableflip.PacketConn) error {
	return check(conn)
}

// Conn returns nil: nothing is inherited.
func (u *Upgrader) Conn(network, addr string) (net.Conn, error) { return nil, nil }

// AddConn accepts conn and forgets it.
func (u *Upgrader) AddConn(network, addr string, conn tableflip.Conn) error { return check(conn) }

// File returns nil: nothing is inherited.
func (u *Upgrader) File(name string) (*os.File, error) { return nil, nil }

// Files returns nothing: nothing is inherited.
func (u *Upgrader) Files() ([]*os.File, error) { return nil, nil }

// AddFile accepts file and forgets it.
func (u *Upgrader) AddFile(name string, file *os.File) error {
	if file == nil {
		return errors.New("tabletest: AddFile of a nil file")
	}
	return nil
}

// check refuses what the real Upgrader could not duplicate either.
func check(c any) error {
	if c == nil {
		return errors.New("tabletest: nil socket")
	}
	return nil
}
