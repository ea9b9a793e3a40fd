//go:build !unix

package tableflip

import (
	"fmt"
	"net"
	"runtime"
	"syscall"
)

// listenControl creates the control socket. Without upgrades and without
// peer credentials it serves only to answer every request with
// ReasonNotSupported.
func listenControl(path string, _ int) (net.Listener, error) {
	return net.Listen("unix", path)
}

func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	return -1, fmt.Errorf("%w: groups on %s", ErrNotSupported, runtime.GOOS)
}

func inGroup(peerCred, int) bool { return false }

func peerCredentials(net.Conn) (peerCred, error) {
	return peerCred{}, fmt.Errorf("%w: no peer credentials on %s", ErrNotSupported, runtime.GOOS)
}

func signalName(sig syscall.Signal) string { return sig.String() }

func inheritedGeneration(*parentLink) uint64 { return 0 }

func (u *Upgrader) childPID() int { return 0 }
