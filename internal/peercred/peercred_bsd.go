//go:build darwin || freebsd

package peercred

import "golang.org/x/sys/unix"

func get(fd int) (Cred, error) {
	xu, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return Cred{}, err
	}
	cred := Cred{UID: int(xu.Uid), GID: -1, Groups: []int{}}
	for i := range min(int(xu.Ngroups), len(xu.Groups)) {
		g := int(xu.Groups[i])
		if i == 0 {
			cred.GID = g
		}
		cred.Groups = append(cred.Groups, g)
	}
	return cred, nil
}
