//go:build linux

package tableflip

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// readOnlyDir makes dir refuse new files: chmod for a user, the immutable
// flag for root (whom modes do not stop). It is undone at cleanup.
func readOnlyDir(t *testing.T, dir string) (undo func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		os.Chmod(dir, 0o555)
		return func() { os.Chmod(dir, 0o755) }
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFL))
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("can't make %s immutable: %v", dir, err)
		}
		t.Skipf("can't make %s immutable (file system without chattr +i?): %v", dir, err)
	}
	undo = func() {
		f, err := os.Open(dir)
		if err != nil {
			return
		}
		defer f.Close()
		unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags))
	}
	t.Cleanup(undo)
	return undo
}

// firstStart runs the faultserver's first generation and returns its first
// line of output.
func firstStart(t *testing.T, env ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), helperEnv+"=faultserver", modeFileEnv+"="+filepath.Join(t.TempDir(), "mode")), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	cmd.Process.Kill()
	cmd.Wait()
	return strings.TrimSpace(line)
}

func dirNames(dir string) []string {
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestPIDFileUnwritable: a PID file in a missing or read-only directory
// fails Ready with a clear error and writes nothing anywhere; in an
// upgrade, the old generation, which writes the new one's pid, refuses to
// hand over and serves on, its Unix socket file in place.
func TestPIDFileUnwritable(t *testing.T) {
	dir := t.TempDir()
	got := firstStart(t, pidFileEnv+"="+filepath.Join(dir, "missing", "app.pid"))
	if !strings.Contains(got, "ready-error tableflip: can't write PID file") || !strings.Contains(got, "no such file or directory") {
		t.Errorf("PID file in a missing directory: %q, want Ready to say so", got)
	}
	ro := filepath.Join(dir, "ro")
	os.Mkdir(ro, 0o755)
	undo := readOnlyDir(t, ro)
	got = firstStart(t, pidFileEnv+"="+filepath.Join(ro, "app.pid"))
	undo()
	if !strings.Contains(got, "ready-error tableflip: can't write PID file") {
		t.Errorf("PID file in a read-only directory: %q, want Ready to say so", got)
	}
	if names := dirNames(dir); len(names) != 1 || names[0] != "ro" {
		t.Errorf("left in %s: %q", dir, names)
	}
	if names := dirNames(ro); len(names) != 0 {
		t.Errorf("left in the read-only directory: %q", names)
	}

	// In an upgrade.
	pidDir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "s.sock")
	s := startFaultServer(t, pidFileEnv+"="+filepath.Join(pidDir, "app.pid"), unixPathEnv+"="+sock)
	s.pidFile = filepath.Join(pidDir, "app.pid")
	firstFDs := s.command("fds")
	l := startLoad(s.tcp)
	undo = readOnlyDir(t, pidDir)
	reply := s.failedUpgrade("serve")
	if !strings.Contains(reply, "can't write PID file") || !strings.Contains(reply, "ChildError{code=1,") {
		t.Errorf("upgrade to a generation whose PID file can't be written: %q, want the old generation's refusal, and the new one's exit", reply)
	}
	if got := unixPID(t, sock); got != strconv.Itoa(s.pid) {
		t.Errorf("Unix socket after the failed upgrade: answered by %q, want %d", got, s.pid)
	}
	undo()
	if names := dirNames(pidDir); len(names) != 1 || names[0] != "app.pid" {
		t.Errorf("PID file directory holds %q, want only app.pid", names)
	}
	if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(s.pid) {
		t.Errorf("PID file: %s, want the old %d", got, s.pid)
	}
	l.finish(t, false)
	if got := s.command("fds"); got != firstFDs {
		t.Errorf("fds: %s before the failed upgrade, %s after", firstFDs, got)
	}
	s.upgrade()
	if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(s.pid) {
		t.Errorf("PID file: %s, want the new %d", got, s.pid)
	}
	s.stopAll(t)
}

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

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h (chattr +i).
const fsImmutableFL = 0x00000010
