//go:build linux

package tableflip

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestListenLateOrNew: a new generation that asks for a socket after
// Ready, or for an address its parent never had, gets a socket of its
// own that serves; the inherited ones still serve, and descriptors do not
// grow once the next generation leaves the extra socket unasked.
func TestListenLateOrNew(t *testing.T) {
	s := startServer(t, serverConfig{})
	firstFDs := s.command("fds")
	for _, mode := range []string{"listen-after-ready", "listen-not-inherited"} {
		s.setMode(mode)
		pid := s.upgrade()
		s.setMode("serve")
		got := s.waitEvent(pid, "late-listen")
		addr, ok := strings.CutPrefix(got, "late-listen ")
		if !ok || strings.HasPrefix(addr, "error") || addr == s.tcp {
			t.Fatalf("%s: %q, want a new socket of its own", mode, got)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("%s: dial the new socket: %v", mode, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) != "late\n" {
			t.Errorf("%s: new socket answered %q, want late", mode, b)
		}
		if got := s.command("pid"); got != strconv.Itoa(pid) {
			t.Errorf("%s: inherited socket answered by %s, want %d", mode, got, pid)
		}
	}
	// The next generation does not ask for the extra socket: Ready
	// closes it, and nothing is left over.
	s.upgrade()
	if got := s.command("fds"); got != firstFDs {
		t.Errorf("fds: first generation %s, now %s", firstFDs, got)
	}
}
