//go:build linux

package tableflip

import (
	"bufio"
	"errors"
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
	cmd.Env = append(append(os.Environ(), helper("faultserver"), modeFileEnv+"="+filepath.Join(t.TempDir(), "mode")), env...)
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

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h (chattr +i).
const fsImmutableFL = 0x00000010

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
