//go:build linux

package tableflip

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestStopBeforeReady: a new generation that is stopped before it calls
// Ready gets ErrStopped from Ready and takes nothing over: its parent's
// Upgrade fails at once with the reason, the parent serves on, named by
// the PID file, on its Unix socket file; and the parent's final Stop
// still cleans up, so that the next start works.
func TestStopBeforeReady(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	s := startFaultServer(t, unixPathEnv+"="+sock, timeoutEnv+"=1m")
	l := startLoad(s.tcp)
	reply := s.failedUpgrade("stop-before-ready")
	if !strings.Contains(reply, "stopped") || !strings.HasSuffix(reply, "[ErrHandover,ChildError{code=1,signal=0}]") {
		t.Errorf("upgrade to a generation stopped before Ready: %q, want its refusal (stopped) and its exit status 1", reply)
	}
	if got := s.waitLine("event "); !strings.Contains(strings.Join(got, " "), "ready-error tableflip: upgrader is stopped") {
		t.Errorf("new generation said %q, want Ready to return ErrStopped", got)
	}
	if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(s.pid) {
		t.Errorf("PID file names %s, want the old generation %d", got, s.pid)
	}
	if got := unixPID(t, sock); got != strconv.Itoa(s.pid) {
		t.Errorf("Unix socket answered by %q, want %d", got, s.pid)
	}
	l.finish(t, false)
	s.stopAll(t)
	for _, path := range []string{sock, s.pidFile} {
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("%s after the final Stop: %v, want it removed", path, err)
		}
	}
}

// TestInheritedListenersWaitForReady: a new generation that serves before
// Ready, as the README's program does, accepts nothing until Ready has
// succeeded. One that never gets ready is stopped at UpgradeTimeout and
// takes no connection with it: every request is answered, all by the old
// generation.
func TestInheritedListenersWaitForReady(t *testing.T) {
	s := startFaultServer(t, timeoutEnv+"=1s")
	l := startLoad(s.tcp)
	reply := s.failedUpgrade("serve-then-hang")
	if !strings.HasSuffix(reply, "[ErrTimeout,ChildError{code=-1,signal=15}]") {
		t.Errorf("upgrade to a generation that never gets ready: %q, want a timeout", reply)
	}
	child := s.waitLine("event ")
	if strings.Join(child[2:], " ") != "serving before ready" {
		t.Fatalf("new generation said %q, want it to serve before Ready", child)
	}
	l.finish(t, false)
	for pid, n := range l.answeredBy() {
		if pid != s.pid {
			t.Errorf("%d requests answered by pid %d, which never got ready; want all by %d", n, pid, s.pid)
		}
	}
	s.stopAll(t)
}
