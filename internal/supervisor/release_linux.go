package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// # Releases
//
// A release is one version of the program's executable file. The
// supervisor keeps a descriptor (O_PATH) of the executable of the
// release that serves and of the one that served before it, so that it
// can start either again (by /proc/self/fd/N) even once a deploy has
// replaced the file on disk: a generation that dies is replaced by the
// same release (not by whatever is on disk now: that is what upgrades are
// for), and with -rollback, a release that dies soon after it became
// ready is replaced by the previous one. Releases are told apart by the
// file's identity (device, inode, size and modification time; not the
// change time, which unlinking the old name changes), so a deploy that
// writes a new file and renames it over the old (as
// package managers, install(1) and go build do) makes a new release; an
// interpreted program's release is its interpreter's, unless the script
// itself is the executable (#!).

// release is one executable file, held open.
type release struct {
	Path string // as it was found when first started
	FD   int    // O_PATH, close-on-exec
	ID   fileID
}

// fileID is what tells two versions of an executable apart.
type fileID struct {
	Dev, Ino uint64
	Size     int64
	Mtime    int64 // nanoseconds
}

func statID(fd int) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	return fileID{
		Dev: st.Dev, Ino: st.Ino, Size: st.Size,
		Mtime: st.Mtim.Nano(),
	}, nil
}

// findExecutable resolves name as exec does: in $PATH without a slash,
// from dir when relative; and checks that it is an executable file.
func findExecutable(name, dir string) (string, error) {
	if !strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("can't find %s in $PATH: %w", name, err)
		}
		name = p
	}
	if !filepath.IsAbs(name) {
		name = filepath.Join(dir, name)
	}
	info, err := os.Stat(name)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("the program %s does not exist", name)
	case err != nil:
		return "", err
	case !info.Mode().IsRegular() || info.Mode()&0o111 == 0:
		return "", fmt.Errorf("the program %s is not an executable file (mode %s)", name, info.Mode())
	}
	return name, nil
}

// openRelease opens the executable at path.
func openRelease(path string) (*release, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	id, err := statID(fd)
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return &release{Path: path, FD: fd, ID: id}, nil
}

// intact reports whether the file is still as it was when opened: one
// written over in place (same inode) is another program now.
func (r *release) intact() bool {
	id, err := statID(r.FD)
	return err == nil && id == r.ID
}

func (r *release) close() {
	if r.FD >= 0 {
		unix.Close(r.FD)
		r.FD = -1
	}
}
