//go:build darwin || freebsd

package tableflip

import "golang.org/x/sys/unix"

func getPeerCred(fd int) (peerCred, error) {
	xu, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return peerCred{}, err
	}
	cred := peerCred{uid: int(xu.Uid), gid: -1, groups: []int{}}
	for i := range min(int(xu.Ngroups), len(xu.Groups)) {
		g := int(xu.Groups[i])
		if i == 0 {
			cred.gid = g
		}
		cred.groups = append(cred.groups, g)
	}
	return cred, nil
}
