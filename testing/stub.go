// Package testing is a stand-in for tableflip's Upgrader that never
// upgrades: Listen creates fresh sockets with net.Listen, nothing is
// inherited, and Upgrade returns tableflip.ErrNotSupported. It has the
// API of github.com/cloudflare/tableflip/testing v1.2.3, so that a program
// or a test written for that package builds and runs with only its
// import paths changed.
//
// Its one difference: Stop closes the Exit channel, as the real
// Upgrader's Stop does, where cloudflare's stub never closed it (a
// program that stops on SIGTERM by calling Stop and waiting for Exit
// hung on it instead).
//
// Deprecated: use package github.com/seed589fcc9d/tableflip/tabletest.
// Its double has the method set of *tableflip.Upgrader (checked at
// compile time, so that it cannot drift from the real API as this one
// did), can be told how each upgrade goes, carries state, and does not
// take the name of the standard library's testing package.
package testing

import (
	"context"
	"net"
	"os"
	"sync"

	"github.com/seed589fcc9d/tableflip"
)

// Upgrader never has a parent and never upgrades. Its zero value is
// usable; New returns one as cloudflare/tableflip's stub did.
type Upgrader struct {
	*Fds

	once, stop sync.Once
	exit       chan struct{}
}

// New returns an Upgrader. Unlike tableflip.New it may be called any
// number of times, and it never fails.
func New() (*Upgrader, error) {
	return &Upgrader{Fds: &Fds{}}, nil
}

func (u *Upgrader) exitChan() chan struct{} {
	u.once.Do(func() { u.exit = make(chan struct{}) })
	return u.exit
}

// Ready returns nil: there is no parent to tell.
func (u *Upgrader) Ready() error { return nil }

// Exit returns a channel that is closed by Stop, and by nothing else:
// there are no upgrades.
func (u *Upgrader) Exit() <-chan struct{} { return u.exitChan() }

// Stop closes the Exit channel. Calling it again does nothing.
func (u *Upgrader) Stop() {
	exit := u.exitChan()
	u.stop.Do(func() { close(exit) })
}

// WaitForParent returns nil at once: there is no parent.
func (u *Upgrader) WaitForParent(ctx context.Context) error { return nil }

// HasParent returns false.
func (u *Upgrader) HasParent() bool { return false }

// Upgrade returns tableflip.ErrNotSupported.
func (u *Upgrader) Upgrade() error { return tableflip.ErrNotSupported }

// Fds has the methods of cloudflare/tableflip v1.2.3's stub Fds: Listen
// creates a socket, the lookups find nothing, and the Add methods accept
// and keep nothing. A nil *Fds works as well.
type Fds struct{}

// Listen returns net.Listen(network, addr): a new listener, owned by the
// caller.
func (f *Fds) Listen(network, addr string) (net.Listener, error) {
	return net.Listen(network, addr)
}

// Listener returns nil, nil: nothing is inherited.
func (f *Fds) Listener(network, addr string) (net.Listener, error) { return nil, nil }

// AddListener returns nil and keeps nothing: there is no next generation.
func (f *Fds) AddListener(network, addr string, ln net.Listener) error { return nil }

// Conn returns nil, nil: nothing is inherited.
func (f *Fds) Conn(network, addr string) (net.Conn, error) { return nil, nil }

// AddConn returns nil and keeps nothing.
func (f *Fds) AddConn(network, addr string, conn net.Conn) error { return nil }

// File returns nil, nil: nothing is inherited.
func (f *Fds) File(name string) (*os.File, error) { return nil, nil }

// AddFile returns nil and keeps nothing.
func (f *Fds) AddFile(name string, file *os.File) error { return nil }
