package tableflip

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// pidPath makes path absolute, taking a relative one from wd.
func pidPath(path, wd string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(wd, path)
}

// writePIDFile puts pid in the file at path, an absolute path or "" for
// none, atomically: the pid is written to a new file beside path, created
// exclusively under a random name so that a symlink planted at any name is
// never followed, and then renamed over path (which replaces a symlink
// there rather than writing through it).
//
// The first generation writes its own pid at Ready. A later generation's
// pid is written by its parent, before the parent acknowledges it: so the
// file names the new generation before the old one can exit (systemd's
// PIDFile= reads it when the main process exits), and before the old one
// tells anyone the upgrade succeeded.
func writePIDFile(path string, pid int) error {
	if path == "" {
		return nil
	}
	if err := writeFileAtomic(path, pid); err != nil {
		return fmt.Errorf("%w: %w", errPIDFile, err)
	}
	return nil
}

func writeFileAtomic(path string, pid int) error {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".*")
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// removePIDFile removes the PID file if it still names this process: a
// later generation may have written its own.
func removePIDFile(path, wd string) {
	path = pidPath(path, wd)
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil || string(bytes.TrimSpace(b)) != strconv.Itoa(os.Getpid()) {
		return
	}
	os.Remove(path)
}
