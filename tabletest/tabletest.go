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
// The double listens where it is told, on fresh sockets (Listen, Addr),
// counts upgrades in Stats, plays the state handover from both sides
// (ParentState, WriteState, HandedOver), and lets the test decide how
// each upgrade goes (UpgradeFunc).
//
// The name does not shadow the standard library's testing package, as
// cloudflare/tableflip's did; package
// github.com/seed589fcc9d/tableflip/testing keeps cloudflare's stub, for
// programs written for it.
package tabletest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

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
	State() (io.Reader, error)
	Stats() tableflip.Stats
	Generation() tableflip.GenerationInfo

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
//
// Set the exported fields before the code under test runs.
type Upgrader struct {
	// UpgradeFunc is called by Upgrade once Ready has been called. Nil
	// means success.
	UpgradeFunc func() error

	// ParentState is what State returns: the state a previous
	// generation wrote (on a first start, the real Upgrader can have
	// some from systemd's fd store). Nil means none: State returns
	// tableflip.ErrNoState. A reader that returns an error other than
	// io.EOF plays state cut short.
	ParentState io.Reader

	// WriteState, if not nil, is called by each Upgrade, before
	// UpgradeFunc, as the real Upgrader calls Options.WriteState: an
	// error fails the upgrade, and what it wrote is what HandedOver
	// returns once the upgrade has succeeded.
	WriteState func(w io.Writer) error

	started   time.Time
	readyC    chan struct{}
	readyOnce sync.Once
	exitC     chan struct{}
	exitOnce  sync.Once
	lc        net.ListenConfig

	mu         sync.Mutex
	ready      bool
	isStopped  bool
	upgrading  bool
	upgrades   int
	succeeded  int
	lastErr    error
	lastErrAt  time.Time
	handedOver []byte
	addrs      map[[2]string]net.Addr
}

// New returns an Upgrader that is not ready yet.
func New() *Upgrader {
	return &Upgrader{
		started: time.Now(),
		exitC:   make(chan struct{}),
		readyC:  make(chan struct{}),
		addrs:   map[[2]string]net.Addr{},
	}
}

// Ready marks the Upgrader ready. As in the real Upgrader, what the code
// under test has not read of ParentState by then is discarded.
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

// Upgrade fails as the real one does before Ready, after Stop, while
// another upgrade runs and after a successful upgrade; otherwise it calls
// WriteState and UpgradeFunc, and closes Exit if both succeed.
func (u *Upgrader) Upgrade() error {
	u.mu.Lock()
	switch {
	case u.isStopped:
		u.mu.Unlock()
		return tableflip.ErrStopped
	case !u.ready:
		u.mu.Unlock()
		return tableflip.ErrNotReady
	case u.upgrading:
		u.mu.Unlock()
		return tableflip.ErrUpgradeInProgress
	}
	select {
	case <-u.exitC:
		u.mu.Unlock()
		return tableflip.ErrUpgraded
	default:
	}
	u.upgrades++
	u.upgrading = true
	fn, write := u.UpgradeFunc, u.WriteState
	u.mu.Unlock()

	var state bytes.Buffer
	var err error
	if write != nil {
		if err = write(&state); err != nil {
			err = fmt.Errorf("tabletest: WriteState: %w", err)
		}
	}
	if err == nil && fn != nil {
		err = fn()
	}

	u.mu.Lock()
	defer u.mu.Unlock()
	u.upgrading = false
	if err != nil {
		u.lastErr, u.lastErrAt = err, time.Now()
		return err
	}
	u.succeeded++
	u.handedOver = state.Bytes()
	u.exitOnce.Do(func() { close(u.exitC) })
	return nil
}

// Upgrades returns how many upgrades were attempted: not counting those
// refused at once (before Ready, after Stop, during another).
func (u *Upgrader) Upgrades() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.upgrades
}

// HandedOver returns what WriteState wrote in the upgrade that
// succeeded, to give as ParentState to the Upgrader of a test of the next
// generation; nil before.
func (u *Upgrader) HandedOver() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.handedOver
}

// State returns ParentState, or tableflip.ErrNoState if it is nil. Once
// Ready has been called it returns a reader at its end, as what the real
// one has not read by then is discarded.
func (u *Upgrader) State() (io.Reader, error) {
	if u.ParentState == nil {
		return nil, tableflip.ErrNoState
	}
	if u.IsReady() {
		return bytes.NewReader(nil), nil
	}
	return u.ParentState, nil
}

// Generation returns this process's pid, generation 1, no parent, and
// when New was called; Conns is -1, as in the real one's.
func (u *Upgrader) Generation() tableflip.GenerationInfo {
	return tableflip.GenerationInfo{PID: os.Getpid(), Generation: 1, Started: u.started, Conns: -1}
}

// Stats describes the double as the real Upgrader describes itself: this
// process's pid, generation 1 with no parent, started by New, the
// upgrades Upgrade attempted, succeeded and failed, the last failure
// (with Reason tableflip.ReasonFailed: the double does not classify
// errors), and one live generation whose connections it does not count
// (-1).
func (u *Upgrader) Stats() tableflip.Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := tableflip.Stats{
		PID:               os.Getpid(),
		Generation:        1,
		Started:           u.started,
		Ready:             u.ready,
		Upgrading:         u.upgrading,
		UpgradesAttempted: uint64(u.upgrades),
		UpgradesSucceeded: uint64(u.succeeded),
		UpgradesFailed:    uint64(u.upgrades - u.succeeded),
	}
	g := u.Generation()
	g.AgeSeconds = time.Since(u.started).Seconds()
	st.Generations = []tableflip.GenerationInfo{g}
	if u.upgrading {
		st.UpgradesFailed-- // Attempted is Succeeded plus Failed, plus one while Upgrading
	}
	select {
	case <-u.exitC:
		st.Exiting = true
	default:
	}
	if u.lastErr != nil {
		st.LastFailure = &tableflip.ControlError{Reason: tableflip.ReasonFailed, Message: u.lastErr.Error()}
		st.LastFailureAt = u.lastErrAt
	}
	return st
}

// WaitForParent returns nil at once: there is no parent.
func (u *Upgrader) WaitForParent(context.Context) error { return nil }

// HasParent returns false.
func (u *Upgrader) HasParent() bool { return false }

// Addr returns the local address of the socket that Listen,
// ListenPacket or their callback variants last created for network and
// addr, or nil if none did: where the code under test listens, when it
// asked for port 0.
func (u *Upgrader) Addr(network, addr string) net.Addr {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.addrs[[2]string{network, addr}]
}

func (u *Upgrader) record(network, addr string, local net.Addr) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.addrs[[2]string{network, addr}] = local
}

// Listen creates a new listener on addr, as net.Listen does (no socket
// is ever inherited): "127.0.0.1:0" gets a free port, which the
// listener's Addr and the Upgrader's Addr tell.
func (u *Upgrader) Listen(network, addr string) (net.Listener, error) {
	return u.ListenWithCallback(network, addr, func(network, addr string) (net.Listener, error) {
		return u.lc.Listen(context.Background(), network, addr)
	})
}

// ListenWithCallback calls callback to create a new listener, and
// records its address for Addr.
func (u *Upgrader) ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	ln, err := callback(network, addr)
	if err == nil && ln != nil {
		u.record(network, addr, ln.Addr())
	}
	return ln, err
}

// Listener returns nil: nothing is inherited.
func (u *Upgrader) Listener(network, addr string) (net.Listener, error) { return nil, nil }

// AddListener accepts ln and forgets it.
func (u *Upgrader) AddListener(network, addr string, ln tableflip.Listener) error {
	return check(ln)
}

// ListenPacket creates a new packet conn on addr, as net.ListenPacket
// does; its LocalAddr and the Upgrader's Addr tell where.
func (u *Upgrader) ListenPacket(network, addr string) (net.PacketConn, error) {
	return u.ListenPacketWithCallback(network, addr, func(network, addr string) (net.PacketConn, error) {
		return u.lc.ListenPacket(context.Background(), network, addr)
	})
}

// ListenPacketWithCallback calls callback to create a new packet conn,
// and records its address for Addr.
func (u *Upgrader) ListenPacketWithCallback(network, addr string, callback func(network, addr string) (net.PacketConn, error)) (net.PacketConn, error) {
	pc, err := callback(network, addr)
	if err == nil && pc != nil {
		u.record(network, addr, pc.LocalAddr())
	}
	return pc, err
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
