//go:build unix

package systemd

import (
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

const sockDgram = unix.SOCK_DGRAM

// inspectFds takes over the fds start, start+1, ... named by names.
func inspectFds(start int, names []string) ([]ListenFd, error) {
	fds := make([]ListenFd, len(names))
	// First make every fd close-on-exec, all at once, with ForkLock held
	// so that no concurrent fork/exec can inherit one in between.
	syscall.ForkLock.Lock()
	for i, name := range names {
		fds[i] = ListenFd{Fd: start + i, Name: name}
		if err := setCloexec(start + i); err != nil {
			fds[i].Err = &FdError{Fd: start + i, Name: name, Err: err}
		}
	}
	syscall.ForkLock.Unlock()

	var errs []error
	for i := range fds {
		l := &fds[i]
		if l.Err != nil {
			errs = append(errs, l.Err)
			continue
		}
		if err := describe(l); err != nil {
			l.Err = &FdError{Fd: l.Fd, Name: l.Name, Err: err}
			errs = append(errs, l.Err)
			continue
		}
		l.File = os.NewFile(uintptr(l.Fd), "systemd:"+l.Name)
	}
	return fds, errors.Join(errs...)
}

func setCloexec(fd int) error {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return err
	}
	if flags&unix.FD_CLOEXEC != 0 {
		return nil
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC)
	return err
}

// describe fills in what l.Fd is. Only failures that make the fd unusable
// are errors; an fd that is no socket, or a socket of a family this
// package does not describe, is left with empty fields.
func describe(l *ListenFd) error {
	typ, err := unix.GetsockoptInt(l.Fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err == unix.ENOTSOCK {
		return nil
	}
	if err != nil {
		return err
	}
	l.Type = typ
	if acc, err := unix.GetsockoptInt(l.Fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil {
		l.Listening = acc != 0
	}
	sa, err := unix.Getsockname(l.Fd)
	if err == unix.EAFNOSUPPORT {
		return nil // a family x/sys does not decode, e.g. AF_VSOCK
	}
	if err != nil {
		return err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		l.Family = unix.AF_INET
		ip := net.IP(append([]byte(nil), sa.Addr[:]...))
		l.Network, l.Addr = ipNetwork(typ, "4", ip, sa.Port, "")
	case *unix.SockaddrInet6:
		l.Family = unix.AF_INET6
		ip := net.IP(append([]byte(nil), sa.Addr[:]...))
		l.Network, l.Addr = ipNetwork(typ, "6", ip, sa.Port, zoneName(sa.ZoneId))
	case *unix.SockaddrUnix:
		l.Family = unix.AF_UNIX
		switch typ {
		case unix.SOCK_STREAM:
			l.Network = "unix"
		case unix.SOCK_DGRAM:
			l.Network = "unixgram"
		case unix.SOCK_SEQPACKET:
			l.Network = "unixpacket"
		}
		if l.Network != "" {
			l.Addr = &net.UnixAddr{Name: sa.Name, Net: l.Network}
		}
	}
	return nil
}

func ipNetwork(typ int, version string, ip net.IP, port int, zone string) (string, net.Addr) {
	switch typ {
	case unix.SOCK_STREAM:
		return "tcp" + version, &net.TCPAddr{IP: ip, Port: port, Zone: zone}
	case unix.SOCK_DGRAM:
		return "udp" + version, &net.UDPAddr{IP: ip, Port: port, Zone: zone}
	}
	return "", nil // e.g. SCTP over SOCK_SEQPACKET
}

func zoneName(id uint32) string {
	if id == 0 {
		return ""
	}
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(id), 10)
}
