//go:build linux

package tableflip

import "golang.org/x/sys/unix"

func getPeerCred(fd int) (peerCred, error) {
	uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return peerCred{}, err
	}
	return peerCred{pid: int(uc.Pid), uid: int(uc.Uid), gid: int(uc.Gid)}, nil
}
