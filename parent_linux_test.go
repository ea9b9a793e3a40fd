//go:build linux

package tableflip

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestParentKilledMidUpgrade: the parent dies while the new generation
// initialises. Ready reports it, and the new generation does not write
// the PID file as if it had been acknowledged.
func TestParentKilledMidUpgrade(t *testing.T) {
	s := startServer(t, serverConfig{})
	fifo := filepath.Join(s.dir, "mode.go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s.setMode("wait-before-ready")
	go func() {
		c, err := net.Dial("tcp", s.tcp)
		if err == nil {
			fmt.Fprintln(c, "upgrade")
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	fields := s.waitLine("event ")
	if fields[2] != "initialising" {
		t.Fatalf("got %q, want the new generation initialising", fields)
	}
	child, _ := strconv.Atoi(fields[1])
	parent := s.pid
	syscall.Kill(parent, syscall.SIGKILL)
	s.first.Wait()
	s.pid = child

	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	got := s.waitEvent(child, "ready-error")
	if !strings.Contains(got, "parent exited before it acknowledged") {
		t.Errorf("Ready after the parent was killed: %q, want ErrParentExited", got)
	}
	if pid := readPIDFile(t, s.pidFile); pid != strconv.Itoa(parent) {
		t.Errorf("PID file says %s, want the killed parent's %d untouched", pid, parent)
	}
	var ws syscall.WaitStatus
	syscall.Wait4(child, &ws, 0, nil)
	s.pid = 0
}

// TestOldKilledDuringHandover SIGKILLs the old generation at each step of
// the handover that the library logs, so that the step is exact rather
// than a matter of timing. TestParentKilledMidUpgrade covers the step
// between them: the new generation initialising.
func TestOldKilledDuringHandover(t *testing.T) {
	t.Run("before the new generation starts", func(t *testing.T) {
		// The upgrade has begun; no process is started yet. Killing
		// the only serving process stops the service: nothing is left
		// to check but that no process is left and the PID file is
		// the dead one's (nobody can remove it).
		s := startFaultServer(t)
		if got := s.command("arm tableflip: upgrade starting"); got != "armed" {
			t.Fatal(got)
		}
		old := s.pid
		s.commandNoFatal("upgrade")
		s.first.Wait()
		if ws := s.first.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
			t.Errorf("old generation: %v, want killed", ws)
		}
		s.pid = 0
		if kids := children(t, os.Getpid()); kids != "" {
			t.Errorf("a new generation was started: %s", kids)
		}
		if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(old) {
			t.Errorf("PID file: %s, want the dead %d's", got, old)
		}
	})

	t.Run("after the new generation starts", func(t *testing.T) {
		// The new process exists but has received nothing: New fails
		// with ErrParentExited, the new generation exits, and nothing
		// holds the sockets.
		s := startFaultServer(t)
		s.command("arm tableflip: new generation started")
		old := s.pid
		s.commandNoFatal("upgrade")
		fields := s.waitLine("event ")
		if got := strings.Join(fields[2:], " "); !strings.HasPrefix(got, "new-error") || !strings.Contains(got, "parent exited") {
			t.Errorf("new generation: %q, want New to fail with ErrParentExited", got)
		}
		child, _ := strconv.Atoi(fields[1])
		s.first.Wait()
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(child, &ws, 0, nil); err != nil || ws.ExitStatus() != 1 {
			t.Errorf("new generation %d: %v %v, want exit status 1", child, ws, err)
		}
		s.pid = 0
		noChildren(t)
		if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(old) {
			t.Errorf("PID file: %s, want the dead %d's untouched", got, old)
		}
		if c, err := net.Dial("tcp", s.tcp); err == nil {
			c.Close()
			t.Errorf("%s still accepts: a process kept the socket", s.tcp)
		}
	})

	t.Run("after the new generation is ready", func(t *testing.T) {
		// The old one has acknowledged and is killed before it drains:
		// the new one serves on, names itself in the PID file, and
		// sees its parent gone.
		s := startFaultServer(t)
		firstFDs := s.command("fds")
		s.command("arm tableflip: new generation is ready")
		l := startLoad(s.tcp)
		old := s.pid
		s.commandNoFatal("upgrade")
		fields := s.waitLine("ready ")
		s.pid, _ = strconv.Atoi(fields[1])
		s.first.Wait()
		if got := s.command("waitparent"); got != "<nil>" {
			t.Errorf("WaitForParent in the new generation: %s, want nil (it was acknowledged)", got)
		}
		// Requests the old one had accepted died with it.
		l.finish(t, true)
		if got := s.command("pid"); got != strconv.Itoa(s.pid) {
			t.Errorf("serving: pid %s, want %d", got, s.pid)
		}
		if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(s.pid) {
			t.Errorf("PID file: %s, want the new %d (old was %d)", got, s.pid, old)
		}
		if got := s.command("fds"); got != firstFDs {
			t.Errorf("fds: first generation %s, second %s", firstFDs, got)
		}
		l = startLoad(s.tcp)
		s.upgrade()
		l.finish(t, false)
		s.stopAll(t)
	})
}
