//go:build linux

package tableflip

import (
	"strings"
	"testing"
)

// TestDescriptorLimit: with the descriptor limit lowered so that the
// handover cannot duplicate every socket, in the old generation or in the
// new one, the upgrade fails with an error that says so, nothing leaks,
// and the old generation serves on.
func TestDescriptorLimit(t *testing.T) {
	s := startFaultServer(t, extraEnv+"=32")
	firstFDs := s.command("fds")
	l := startLoad(s.tcp)

	// The old generation: three descriptors free for 33 sockets.
	reply := s.command("lowfd-upgrade 3")
	if !strings.HasPrefix(reply, "error tableflip: can't duplicate") || !strings.Contains(reply, "too many open files") {
		t.Errorf("upgrade with 3 descriptors free: %q, want a failure to duplicate", reply)
	}
	if kids := children(t, s.pid); kids != "" {
		t.Errorf("after the failed upgrade: children %s", kids)
	}
	// Counted with no request of the client open.
	l.finish(t, false)
	if got := s.command("fds"); got != firstFDs {
		t.Errorf("fds: %s before the failed upgrade, %s after", firstFDs, got)
	}
	l = startLoad(s.tcp)

	// The new generation: a limit of 16 for 33 sockets.
	reply = s.failedUpgrade("lowfd-child")
	if !strings.Contains(reply, "ErrHandover") || !strings.Contains(reply, "descriptor limit too low") {
		t.Errorf("upgrade to a generation with a limit of 16: %q, want the handover refused for the limit", reply)
	}
	l.finish(t, false)
	if got := s.command("fds"); got != firstFDs {
		t.Errorf("fds: %s before the failed upgrade, %s after", firstFDs, got)
	}
	s.upgrade()
	s.stopAll(t)
}
