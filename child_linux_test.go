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

	"github.com/seed589fcc9d/tableflip/internal/handover"
)

// failedUpgrade asks for an upgrade that must fail, checks that the old
// generation still serves and has no child left, and returns the reply.
func (s *server) failedUpgrade(mode string) string {
	s.t.Helper()
	s.setMode(mode)
	defer s.setMode("serve")
	reply := s.command("upgrade")
	if !strings.HasPrefix(reply, "error ") {
		s.t.Fatalf("upgrade with a new generation in mode %s: got %q, want an error", mode, reply)
	}
	if got := s.command("pid"); got != strconv.Itoa(s.pid) {
		s.t.Errorf("after a failed upgrade (%s) pid %s serves, want the old %d", mode, got, s.pid)
	}
	if got := s.command("nonblock"); got != "true" {
		s.t.Errorf("after a failed upgrade (%s) the listener is non-blocking: %s, want true", mode, got)
	}
	if kids := children(s.t, s.pid); kids != "" {
		s.t.Errorf("after a failed upgrade (%s) pid %d has children %q, want none (reaped)", mode, s.pid, kids)
	}
	return reply
}

// children lists the child pids of pid.
func children(t testing.TB, pid int) string {
	t.Helper()
	var all []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err == nil {
			all = append(all, strings.Fields(string(b))...)
		}
	}
	return strings.Join(all, " ")
}

func TestUpgradeChildFails(t *testing.T) {
	s := startServer(t, serverConfig{})
	for _, tc := range []struct {
		mode string
		want string
	}{
		{"exit1", "[ErrChildExited,ChildError{code=1,signal=0}]"},
		{"exit0", "[ErrChildExited,ChildError{code=0,signal=0}]"},
		{"panic", "[ErrChildExited,ChildError{code=2,signal=0}]"},
		{"kill", "[ErrChildExited,ChildError{code=-1,signal=9}]"},
		{"speak-other-version", "[ErrHandover,ChildError{code=1,signal=0}]"},
	} {
		reply := s.failedUpgrade(tc.mode)
		if !strings.HasSuffix(reply, tc.want) {
			t.Errorf("child in mode %s: got %q, want errors %s", tc.mode, reply, tc.want)
		}
		if tc.mode == "speak-other-version" && !strings.Contains(reply, fmt.Sprintf("unsupported protocol version %d", handover.Version+1)) {
			t.Errorf("protocol mismatch: got %q, want the child's reason", reply)
		}
	}
	// The server upgrades fine afterwards.
	s.upgrade()
}

func TestUpgradeTimeout(t *testing.T) {
	s := startServer(t, serverConfig{env: []string{timeoutEnv + "=2s"}})
	for _, tc := range []struct {
		mode string
		want string
	}{
		// SIGTERM first; SIGKILL after the grace when it is ignored.
		{"hang", "[ErrTimeout,ChildError{code=-1,signal=15}]"},
		{"hang-ignore-term", "[ErrTimeout,ChildError{code=-1,signal=9}]"},
	} {
		reply := s.failedUpgrade(tc.mode)
		if !strings.HasSuffix(reply, tc.want) {
			t.Errorf("child in mode %s: got %q, want errors %s", tc.mode, reply, tc.want)
		}
	}
}

func TestUpgradeRefusedWhileOneRuns(t *testing.T) {
	s := startServer(t, serverConfig{env: []string{timeoutEnv + "=30s"}})
	s.setMode("hang")
	first := make(chan string, 1)
	go func() {
		c, err := net.Dial("tcp", s.tcp)
		if err != nil {
			first <- err.Error()
			return
		}
		defer c.Close()
		fmt.Fprintln(c, "upgrade")
		b, _ := io.ReadAll(c)
		first <- strings.TrimSpace(string(b))
	}()
	hanging := s.waitLine("event ")
	if strings.Join(hanging[2:], " ") != "hanging" {
		t.Fatalf("got %q, want the new generation hanging", hanging)
	}
	if got := s.command("upgrade"); !strings.HasSuffix(got, "[ErrUpgradeInProgress]") {
		t.Errorf("second upgrade while one runs: got %q, want ErrUpgradeInProgress", got)
	}
	child, _ := strconv.Atoi(hanging[1])
	syscall.Kill(child, syscall.SIGKILL)
	if got := <-first; !strings.Contains(got, "ErrChildExited") {
		t.Errorf("first upgrade: got %q, want ErrChildExited", got)
	}
}

func TestReadyTwice(t *testing.T) {
	s := startServer(t, serverConfig{})
	s.setMode("ready-twice")
	pid := s.upgrade()
	if got := s.waitEvent(pid, "ready-again"); got != "ready-again <nil>" {
		t.Errorf("second Ready: got %q, want nil", got)
	}
}

func TestExecutableGone(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "server")
	copyFile(t, os.Args[0], exe, 0o755)
	s := startServer(t, serverConfig{executable: exe})

	os.Remove(exe)
	if got := s.command("upgrade"); !strings.Contains(got, "no longer exists") {
		t.Errorf("upgrade with the executable deleted: %q, want it to say so", got)
	}
	os.WriteFile(exe, []byte("not a program"), 0o644)
	if got := s.command("upgrade"); !strings.Contains(got, "not an executable file") {
		t.Errorf("upgrade with a non-executable file: %q, want it to say so", got)
	}
	os.Chmod(exe, 0o755)
	if got := s.command("upgrade"); !strings.Contains(got, "exec format error") {
		t.Errorf("upgrade with a file that is not a program: %q, want exec format error", got)
	}
	os.WriteFile(exe, []byte("#!/bin/sh\nexit 0\n"), 0o755)
	if got := s.command("upgrade"); !strings.HasSuffix(got, "[ErrChildExited,ChildError{code=0,signal=0}]") {
		t.Errorf("upgrade to a program that does not speak the protocol: %q, want ErrChildExited", got)
	}
	if got := s.command("pid"); got != strconv.Itoa(s.pid) {
		t.Errorf("after the failed upgrades pid %s serves, want %d", got, s.pid)
	}
	copyFile(t, os.Args[0], exe, 0o755)
	s.upgrade()
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(to)
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
