//go:build linux

package tableflip

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestUpgradeServesThroughout upgrades a real server three times: every
// generation serves TCP, UDP and a Unix socket on the same sockets as the
// first, the PID file follows, and the last generation holds no more
// descriptors than the first.
func TestUpgradeServesThroughout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	s := startServer(t, serverConfig{env: []string{unixPathEnv + "=" + sock}})
	firstFDs := s.command("fds")

	for i := range 3 {
		old := s.pid
		pid := s.upgrade()
		if pid == old {
			t.Fatalf("upgrade %d: still pid %d", i+1, pid)
		}
		want := strconv.Itoa(pid)
		if got := s.command("pid"); got != want {
			t.Errorf("upgrade %d: TCP answered by pid %s, want %s", i+1, got, want)
		}
		if got := s.udpPID(); got != want {
			t.Errorf("upgrade %d: UDP answered by pid %s, want %s", i+1, got, want)
		}
		if got := unixPID(t, sock); got != want {
			t.Errorf("upgrade %d: Unix socket answered by pid %s, want %s", i+1, got, want)
		}
		if got := readPIDFile(t, s.pidFile); got != want {
			t.Errorf("upgrade %d: PID file says %s, want %s", i+1, got, want)
		}
	}
	if lastFDs := s.command("fds"); lastFDs != firstFDs {
		t.Errorf("fds: first generation had %s open, the fourth %s", firstFDs, lastFDs)
	}

	if got := s.command("stop"); got != "stopped" {
		t.Fatalf("stop: got %q", got)
	}
	s.waitEvent(s.pid, "exiting")
	s.reap(s.pid)
	s.pid = 0
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("Unix socket file after a final Stop: %v, want it removed", err)
	}
	if _, err := os.Stat(s.pidFile); !os.IsNotExist(err) {
		t.Errorf("PID file after a final Stop: %v, want it removed", err)
	}
}

func readPIDFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
