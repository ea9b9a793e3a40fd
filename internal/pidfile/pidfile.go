// Package pidfile writes and removes PID files, for the Upgrader's
// generations and for tableflip run's supervisor.
package pidfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// Write puts pid in the file at path atomically: the pid is written to a
// new file beside path, created exclusively under a random name so that a
// symlink planted at any name is never followed, and then renamed over
// path (which replaces a symlink there rather than writing through it).
// Readers see the old content or the new, never a part.
func Write(path string, pid int) error {
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

// Remove removes the file at path if it names pid: another process may
// have written its own since.
func Remove(path string, pid int) {
	b, err := os.ReadFile(path)
	if err != nil || string(bytes.TrimSpace(b)) != strconv.Itoa(pid) {
		return
	}
	os.Remove(path)
}
