package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/systemd"
)

// socket is one socket the program gets, held by the supervisor for as
// long as it runs: the program's generations come and go, the socket and
// the connections waiting in its queue stay.
type socket struct {
	Spec ListenSpec
	// FD is the supervisor's descriptor, close-on-exec. It shares the
	// open file description with every generation's copy, so it is never
	// touched through os.File.Fd (which would make it blocking for all).
	FD int
	// Unlink is the socket file that the supervisor made, removed at the
	// end; "" for sockets that systemd passed and abstract ones.
	Unlink string
	// Systemd is set for a socket that systemd passed.
	Systemd bool
}

// openSockets returns the program's sockets: first those of specs, in
// order, each the socket systemd passed with that network and address
// (systemd.ListenFd.Matches) or else a new one; then the other sockets
// systemd passed, in its order, under their names. On error it closes
// what it opened.
func openSockets(specs []ListenSpec, log *slog.Logger) ([]*socket, error) {
	passed, err := systemd.ListenFds()
	if err != nil {
		// Unusable fds are reported and left out; the rest serve.
		log.Warn("tableflip run: socket activation", "error", err)
	}
	passed = slices.DeleteFunc(passed, func(l systemd.ListenFd) bool { return l.File == nil })
	var socks []*socket
	fail := func(err error) ([]*socket, error) {
		closeSockets(socks)
		for _, l := range passed {
			l.File.Close()
		}
		return nil, err
	}
	for _, spec := range specs {
		i := slices.IndexFunc(passed, func(l systemd.ListenFd) bool { return l.Matches(spec.Network, spec.Addr) })
		if i >= 0 {
			l := passed[i]
			passed = slices.Delete(passed, i, i+1)
			s, err := passedSocket(l, spec.Name)
			if err != nil {
				return fail(err)
			}
			log.Info("tableflip run: using the socket systemd passed", "listen", spec.String(), "passed_fd", l.Fd, "passed_name", l.Name)
			socks = append(socks, s)
			continue
		}
		s, err := listen(spec)
		if err != nil {
			return fail(fmt.Errorf("-listen %s: %w", spec, err))
		}
		socks = append(socks, s)
	}
	for len(passed) > 0 {
		l := passed[0]
		passed = passed[1:]
		s, err := passedSocket(l, l.Name)
		if err != nil {
			return fail(err)
		}
		socks = append(socks, s)
	}
	return socks, nil
}

// passedSocket takes over a socket that systemd passed.
func passedSocket(l systemd.ListenFd, name string) (*socket, error) {
	defer l.File.Close()
	fd, err := dup.Conn(l.File)
	if err != nil {
		return nil, fmt.Errorf("the socket systemd passed as fd %d (%s): %w", l.Fd, l.Name, err)
	}
	spec := ListenSpec{Name: name, Network: l.Network}
	if l.Addr != nil {
		spec.Addr = l.Addr.String()
	}
	return &socket{Spec: spec, FD: fd, Systemd: true}, nil
}

// listen makes the socket of spec. A Unix socket file that nobody serves
// (left by a supervisor that was killed) is replaced.
func listen(spec ListenSpec) (*socket, error) {
	var c syscall.Conn
	unlink := ""
	switch spec.Network {
	case "udp", "udp4", "udp6":
		pc, err := net.ListenPacket(spec.Network, spec.Addr)
		if err != nil {
			return nil, err
		}
		defer pc.Close()
		c = pc.(syscall.Conn)
	default:
		ln, err := net.Listen(spec.Network, spec.Addr)
		if spec.Network == "unix" && isAddrInUse(err) && staleUnixSocket(spec.Addr) {
			os.Remove(spec.Addr)
			ln, err = net.Listen(spec.Network, spec.Addr)
		}
		if err != nil {
			return nil, err
		}
		if ul, ok := ln.(*net.UnixListener); ok {
			// The file outlives this listener: the program's
			// generations accept on it.
			ul.SetUnlinkOnClose(false)
			if !strings.HasPrefix(spec.Addr, "@") {
				unlink = spec.Addr
			}
		}
		defer ln.Close()
		c = ln.(syscall.Conn)
	}
	fd, err := dup.Conn(c)
	if err != nil {
		if unlink != "" {
			os.Remove(unlink)
		}
		return nil, err
	}
	s := &socket{Spec: spec, FD: fd, Unlink: unlink}
	if strings.HasSuffix(spec.Addr, ":0") {
		// The program learns the port from the socket; the
		// supervisor's own -ready tcp and status need it too.
		if sa, err := syscall.Getsockname(fd); err == nil {
			s.Spec.Addr = sockaddrString(sa, spec.Addr)
		}
	}
	return s, nil
}

func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// staleUnixSocket reports whether path is a socket file on which nobody
// listens any more.
func staleUnixSocket(path string) bool {
	info, err := os.Lstat(path)
	if err != nil || info.Mode()&os.ModeSocket == 0 {
		return false
	}
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(context.Background(), "unix", path)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func sockaddrString(sa syscall.Sockaddr, fallback string) string {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *syscall.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	}
	return fallback
}

// closeSockets closes the supervisor's descriptors and removes the socket
// files it made: the end of the service.
func closeSockets(socks []*socket) {
	for _, s := range socks {
		syscall.Close(s.FD)
		if s.Unlink != "" {
			os.Remove(s.Unlink)
		}
	}
}

// protocolVars are the variables the supervisor sets for the program, or
// that are meant for the supervisor alone: they are never passed through
// from its own environment.
var protocolVars = []string{
	systemd.EnvListenPID, systemd.EnvListenFds, systemd.EnvListenFdNames,
	systemd.EnvNotifySocket, "WATCHDOG_PID", "WATCHDOG_USEC", stateEnv,
}

// programEnv is the program's environment: the supervisor's own without
// the protocol's variables, then LISTEN_FDS and LISTEN_FDNAMES for socks
// (LISTEN_PID, which must be the program's own pid, is added by the
// process that becomes the program, see Zygote) and NOTIFY_SOCKET.
func programEnv(base []string, socks []*socket, notifySocket string) []string {
	env := make([]string, 0, len(base)+3)
	for _, kv := range base {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(protocolVars, name) {
			env = append(env, kv)
		}
	}
	if len(socks) > 0 {
		names := make([]string, len(socks))
		for i, s := range socks {
			names[i] = s.Spec.Name
		}
		env = append(env,
			systemd.EnvListenFds+"="+strconv.Itoa(len(socks)),
			systemd.EnvListenFdNames+"="+strings.Join(names, ":"))
	}
	return append(env, systemd.EnvNotifySocket+"="+notifySocket)
}
