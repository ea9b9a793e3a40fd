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
	"testing"
)

// TestSocketFilesOfFailedGeneration: a new generation that listens on the
// inherited Unix sockets and then gives up before Ready (and calls Stop,
// as a deferred Stop does) leaves the socket file to the old generation,
// which serves on it. An abstract socket ("@name") is never unlinked: a
// socket file named like it in the working directory survives every
// upgrade and the final Stop.
func TestSocketFilesOfFailedGeneration(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	wd := t.TempDir()
	abstract := "@tableflip-test-" + strconv.Itoa(os.Getpid()) + "-" + filepath.Base(wd)
	decoy, err := net.Listen("unix", filepath.Join(wd, abstract))
	if err != nil {
		t.Fatal(err)
	}
	decoy.(*net.UnixListener).SetUnlinkOnClose(false)
	decoy.Close()

	s := startFaultServer(t, unixPathEnv+"="+sock, abstractEnv+"="+abstract, chdirEnv+"="+wd)
	firstFDs := s.command("fds")
	l := startLoad(s.tcp)
	reply := s.failedUpgrade("exit-after-listen")
	if !strings.Contains(reply, "stopped") || !strings.HasSuffix(reply, "[ErrHandover,ChildError{code=1,signal=0}]") {
		t.Errorf("upgrade to a generation that gives up: %q", reply)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("Unix socket file after a failed generation: %v, want it kept", err)
	} else if got := unixPID(t, sock); got != strconv.Itoa(s.pid) {
		t.Errorf("Unix socket: answered by %q, want %d", got, s.pid)
	}
	if got := unixPID(t, abstract); got != strconv.Itoa(s.pid) {
		t.Errorf("abstract socket: answered by %q, want %d", got, s.pid)
	}
	// Counted with no request of the client open.
	l.finish(t, false)
	if got := s.command("fds"); got != firstFDs {
		t.Errorf("fds: %s before the failed upgrade, %s after", firstFDs, got)
	}
	l = startLoad(s.tcp)
	s.upgrade()
	if got := unixPID(t, abstract); got != strconv.Itoa(s.pid) {
		t.Errorf("abstract socket after an upgrade: answered by %q, want %d", got, s.pid)
	}
	l.finish(t, false)
	s.stopAll(t)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("Unix socket file after a final Stop: %v, want it removed", err)
	}
	if _, err := os.Lstat(filepath.Join(wd, abstract)); err != nil {
		t.Errorf("a file named like the abstract socket: %v, want it untouched", err)
	}
	if ln, err := net.Listen("unix", abstract); err != nil {
		t.Errorf("abstract name after a final Stop: %v, want it free", err)
	} else {
		ln.Close()
	}
}

// TestStaleSocketFile: a Unix socket file that a killed generation left
// behind, which nobody serves, does not stop the next start: Listen
// replaces it. One that a process serves is left alone, and Listen says
// so.
func TestStaleSocketFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	dead, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	dead.(*net.UnixListener).SetUnlinkOnClose(false)
	dead.Close()

	u := firstGeneration(t, Options{})
	ln, err := u.Listen("unix", path)
	if err != nil {
		t.Fatalf("Listen on a stale socket file: %v, want it replaced", err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := net.Dial("unix", path); err != nil {
		t.Errorf("dialling the replaced socket: %v", err)
	} else {
		c.Close()
	}

	if _, err := u.Listen("unix", path+"x"); err != nil {
		t.Fatal(err)
	}
	_, err = u.ListenPacket("unixgram", path) // served, as a stream socket
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("ListenPacket on a socket file another listener serves: %v, want address already in use", err)
	}
}

func unixPID(t testing.TB, path string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial unix %s: %v", path, err)
	}
	defer c.Close()
	fmt.Fprintln(c, "pid")
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("unix %s: %v", path, err)
	}
	return strings.TrimSpace(string(reply))
}
