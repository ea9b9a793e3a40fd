//go:build unix

package tableflip

import (
	"net"
	"os"
	"testing"
)

// firstGeneration is an Upgrader of this process that has no parent, for
// tests that need no other process.
func firstGeneration(t testing.TB, opts Options) *Upgrader {
	t.Helper()
	u, err := newUpgrader(&osEnv{lookupEnv: func(string) (string, bool) { return "", false }, wd: t.TempDir(), args: os.Args}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Stop)
	return u
}

// TestStatsCountsConnections: Stats counts the connections accepted on
// the Upgrader's listeners until the program closes them, and nothing
// else; Generation has the fixed facts.
func TestStatsCountsConnections(t *testing.T) {
	u := firstGeneration(t, Options{})
	ln, err := u.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var accepted []net.Conn
	for _, l := range []net.Listener{ln, ln, ln, other} {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		accepted = append(accepted, sc)
	}
	count := func() int {
		st := u.Stats()
		if len(st.Generations) != 1 {
			t.Fatalf("Stats lists %+v, want this generation alone", st.Generations)
		}
		return st.Generations[0].Conns
	}
	if got := count(); got != 3 {
		t.Errorf("3 connections accepted on the Upgrader's listener (and 1 on another): Stats counts %d", got)
	}
	accepted[0].Close()
	if got := count(); got != 2 {
		t.Errorf("after the program closed one: Stats counts %d, want 2", got)
	}

	g := u.Generation()
	if want := (GenerationInfo{PID: os.Getpid(), Generation: 1, Started: g.Started, Conns: -1}); g != want || g.Started.IsZero() {
		t.Errorf("Generation() = %+v, want %+v with a start time", g, want)
	}
}

// TestConnSetForgets: a set that is never counted forgets closed
// connections as it grows, so that it does not keep every connection a
// program ever accepted.
func TestConnSetForgets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var s connSet
	for range 1000 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.add(sc)
		sc.Close()
		c.Close()
	}
	s.mu.Lock()
	held := len(s.conns)
	s.mu.Unlock()
	if held > 65 {
		t.Errorf("1000 connections accepted and closed: the set holds %d, want at most 65", held)
	}
	if got := s.count(); got != 0 {
		t.Errorf("count = %d, want 0", got)
	}
}
