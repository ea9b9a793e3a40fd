//go:build unix

package tableflip

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenControl creates the control socket at path with mode 0600, or
// 0660 and group gid. The socket is bound under a temporary name in the
// same directory, given its mode and group, and only then renamed to path,
// so that the file is never at path with a wider mode.
func listenControl(path string, gid int) (net.Listener, error) {
	if err := checkStaleSocket(path); err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		mode = 0o660
	}
	tmp := filepath.Join(filepath.Dir(path), ".tableflip-"+strconv.Itoa(os.Getpid())+".sock")
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &controlListener{ln, &net.UnixAddr{Name: path, Net: "unix"}}, nil
}

// controlListener reports the path it was renamed to as its address,
// which is what Fds passes it on under.
type controlListener struct {
	*net.UnixListener
	addr *net.UnixAddr
}

func (l *controlListener) Addr() net.Addr { return l.addr }

// checkStaleSocket fails if something else is at path: a file that is not
// a socket, or a socket that some process serves. A socket nobody serves
// is left behind by a process that died, and is replaced.
func checkStaleSocket(path string) error {
	_, err := staleSocket("unix", path)
	return err
}

// lookupGroup returns the gid of a group name or number, or -1 for "".
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

// inGroup reports whether the peer belongs to group gid.
func inGroup(cred peerCred, gid int) bool {
	if cred.gid == gid || slices.Contains(cred.groups, gid) {
		return true
	}
	if cred.groups != nil {
		return false
	}
	u, err := user.LookupId(strconv.Itoa(cred.uid))
	if err != nil {
		return false
	}
	ids, err := u.GroupIds()
	return err == nil && slices.Contains(ids, strconv.Itoa(gid))
}

// peerCredentials asks the kernel who is at the other end of c.
func peerCredentials(c net.Conn) (peerCred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return peerCred{}, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peerCred{}, err
	}
	var cred peerCred
	var credErr error
	if err := rc.Control(func(fd uintptr) { cred, credErr = getPeerCred(int(fd)) }); err != nil {
		return peerCred{}, err
	}
	return cred, credErr
}

func signalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return sig.String()
}

// inheritedGeneration is the generation number of the parent, or 0.
func inheritedGeneration(p *parentLink) uint64 {
	if p == nil {
		return 0
	}
	return p.generation
}

// childPID is the pid of the generation the last successful upgrade
// started. Only the run loop calls it, after startChild has returned.
func (u *Upgrader) childPID() int {
	if len(u.children) == 0 {
		return 0
	}
	return u.children[len(u.children)-1].pid
}
