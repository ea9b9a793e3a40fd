package tableflip

import (
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/seed589fcc9d/tableflip/internal/handover"
)

// inheritedFds builds an Fds as a new generation sees it after a handover
// of the given sockets, which the caller keeps open.
func inheritedFds(t *testing.T, sockets ...Listener) *Fds {
	t.Helper()
	parent := newFds(nil, nil, slogDiscard)
	for _, ln := range sockets {
		parent.mu.Lock()
		parent.own(key{handover.KindListener, "tcp", "127.0.0.1:0"}, ln, ln.Addr())
		parent.mu.Unlock()
	}
	p, err := parent.collect(false)
	if err != nil {
		t.Fatal(err)
	}
	entries := make([]*entry, len(p.entries))
	for i, e := range p.entries {
		// The child receives descriptors of its own.
		entries[i] = &entry{key: key{e.Kind, e.Network, e.Addr}, bound: e.Bound, fd: p.fds[i]}
	}
	return newFds(entries, nil, slogDiscard)
}

func listen(t *testing.T) Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(Listener)
}

func TestListenFindsPortZeroByBothNames(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no inheritance without upgrades")
	}
	a, b := listen(t), listen(t)
	f := inheritedFds(t, a, b)

	// Two listeners asked for as "127.0.0.1:0": the first request gets
	// the first, and the second's real address finds the second.
	got, err := f.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if got.Addr().String() != a.Addr().String() {
		t.Errorf("Listen(127.0.0.1:0) = %s, want the inherited %s", got.Addr(), a.Addr())
	}
	got2, err := f.Listen("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer got2.Close()
	if got2.Addr().String() != b.Addr().String() {
		t.Errorf("Listen(%s) = %s, want the inherited socket", b.Addr(), got2.Addr())
	}
	// Both are passed on again, under the name they were created with.
	p, err := f.collect(false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if len(p.entries) != 2 {
		t.Fatalf("passed on %d sockets, want 2: %+v", len(p.entries), p.entries)
	}
	for _, e := range p.entries {
		if e.Addr != "127.0.0.1:0" {
			t.Errorf("passed on %+v, want the name 127.0.0.1:0 kept", e)
		}
	}
}

func TestClosedSocketIsNotPassedOn(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no inheritance without upgrades")
	}
	f := newFds(nil, nil, slogDiscard)
	ln, err := f.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := f.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ln.Close()
	p, err := f.collect(false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if len(p.entries) != 1 || p.entries[0].Kind != handover.KindPacketConn {
		t.Errorf("passed on %+v, want only the open packet conn", p.entries)
	}
}

func TestListenWithCallbackRejectsPlainListener(t *testing.T) {
	f := newFds(nil, nil, slogDiscard)
	var closed bool
	_, err := f.ListenWithCallback("tcp", "127.0.0.1:0", func(network, addr string) (net.Listener, error) {
		return &plainListener{closed: &closed}, nil
	})
	if err == nil || !strings.Contains(err.Error(), "does not implement tableflip.Listener") {
		t.Errorf("callback returning a plain net.Listener: %v, want an error naming the interface", err)
	}
	if !closed {
		t.Error("the rejected listener was not closed")
	}
}

type plainListener struct {
	net.Listener
	closed *bool
}

func (l *plainListener) Close() error { *l.closed = true; return nil }

func TestAddFileIsPassedOn(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no inheritance without upgrades")
	}
	f := newFds(nil, nil, slogDiscard)
	file, err := os.CreateTemp(t.TempDir(), "state")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddFile("state", file); err != nil {
		t.Fatal(err)
	}
	// The caller may close its copy.
	file.Close()
	p, err := f.collect(false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if len(p.entries) != 1 || p.entries[0].Addr != "state" || p.entries[0].Kind != handover.KindFile {
		t.Errorf("passed on %+v, want the file named state", p.entries)
	}
	f.closeUsed(false)
}
