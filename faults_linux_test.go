//go:build linux

package tableflip

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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

// TestSubprocessSeesNothing: a subprocess that an upgraded generation
// starts while its parent still runs inherits neither the handover
// variable nor any descriptor.
func TestSubprocessSeesNothing(t *testing.T) {
	s := startServer(t, serverConfig{})
	s.setMode("spawn")
	pid := s.upgrade()
	want := `spawned "handover-var=false inherited-sockets=0" <nil>`
	if got := s.waitEvent(pid, "spawned"); got != want {
		t.Errorf("subprocess of an upgraded generation: got %s, want %s", got, want)
	}
}

func TestSpoofedEnvironment(t *testing.T) {
	var token [handover.TokenSize]byte
	spoof := func(pid int) string {
		return "TABLEFLIP_HANDOVER=" + handover.Env{Version: handover.Version, PID: pid, FD: 3, Token: token}.String()
	}

	t.Run("another parent", func(t *testing.T) {
		// The variable names a process that is not the parent: it is
		// ignored, and this is a first start.
		s := startServer(t, serverConfig{env: []string{spoof(1)}})
		if got := s.command("hasparent"); got != "false" {
			t.Errorf("HasParent with a spoofed variable: %s, want false", got)
		}
	})

	t.Run("wrong token", func(t *testing.T) {
		// The right parent, a socket, but not the token of the parent
		// that named it: refused, with the reason sent back.
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		ours := os.NewFile(uintptr(fds[0]), "ours")
		theirs := os.NewFile(uintptr(fds[1]), "theirs")
		defer ours.Close()
		// The socket buffer holds the hello until the child reads it.
		hello, _ := (&handover.Hello{Version: handover.Version, Token: [handover.TokenSize]byte{1}}).MarshalBinary()
		ours.Write(handover.AppendFrame(nil, handover.FrameHello, hello))
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=server", spoof(os.Getpid()))
		cmd.ExtraFiles = []*os.File{theirs}
		out, err := cmd.Output()
		theirs.Close()
		if err == nil {
			t.Fatalf("helper with a wrong token: exited 0, want New to fail; output %q", out)
		}
		if !strings.Contains(string(out), "new-error") || !strings.Contains(string(out), "token does not match") {
			t.Errorf("helper with a wrong token said %q, want a new-error naming the token", out)
		}
		typ, msg, err := handover.ReadFrame(ours)
		if err != nil || typ != handover.FrameError || !strings.Contains(string(msg), "token") {
			t.Errorf("parent got frame %q %q (%v), want an error frame naming the token", typ, msg, err)
		}
	})
}

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

// TestInheritedConnReallyCloses: closing an inherited connection ends it
// for the peer at once, not when the process exits.
func TestInheritedConnReallyCloses(t *testing.T) {
	s := startServer(t, serverConfig{})
	c, err := net.Dial("tcp", s.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "keep")
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); line != "kept\n" {
		t.Fatalf("keep: got %q %v", line, err)
	}
	pid := s.upgrade()
	// A deadline bounds a failure, it does not synchronise: the new
	// generation closes the connection as it starts.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading the inherited connection: %v (the close never reached the peer)", err)
	}
	if want := fmt.Sprintf("hello from %d\n", pid); string(rest) != want {
		t.Errorf("inherited connection said %q, want %q then end of file", rest, want)
	}
}

func TestPIDFileNotThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("precious"), 0o644)
	path := filepath.Join(dir, "app.pid")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(path, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "precious" {
		t.Errorf("symlink target now holds %q, want it untouched", b)
	}
	info, err := os.Lstat(path)
	if err != nil || !info.Mode().IsRegular() {
		t.Errorf("PID file is %v (%v), want a regular file replacing the symlink", info.Mode(), err)
	}
	if got, want := readPIDFile(t, path), strconv.Itoa(os.Getpid()); got != want {
		t.Errorf("PID file says %q, want %q", got, want)
	}

	err = writePIDFile(filepath.Join(dir, "missing", "app.pid"), os.Getpid())
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PID file in a missing directory: %v, want ErrNotExist", err)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, ".*")); len(names) != 0 {
		t.Errorf("temporary files left behind: %q", names)
	}
}
