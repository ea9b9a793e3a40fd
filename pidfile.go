package tableflip

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// pendingPID is a PID file written to a temporary name, waiting to be
// renamed into place. Writing it before the handover is committed means a
// full disk or a missing directory fails the upgrade, not the process that
// already took over.
type pendingPID struct {
	tmp, path string
}

func pidPath(path, wd string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(wd, path)
}

// newPIDFile writes this process's pid to a new file beside path. The file
// is created exclusively under a random name, so a symlink planted at any
// name is never followed. A nil result with no error means there is no
// PID file to write.
func newPIDFile(path, wd string) (*pendingPID, error) {
	path = pidPath(path, wd)
	if path == "" {
		return nil, nil
	}
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".*")
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return &pendingPID{tmp: f.Name(), path: path}, nil
}

// commit puts the PID file in place atomically. rename replaces a symlink
// at path rather than writing through it.
func (p *pendingPID) commit() error {
	if p == nil {
		return nil
	}
	if err := os.Rename(p.tmp, p.path); err != nil {
		os.Remove(p.tmp)
		return err
	}
	return nil
}

func (p *pendingPID) abandon() {
	if p != nil {
		os.Remove(p.tmp)
	}
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
