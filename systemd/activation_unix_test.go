//go:build unix

package systemd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// fileOf returns a duplicate of c's fd as an *os.File.
func fileOf(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func cloexec(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	return flags&unix.FD_CLOEXEC != 0
}

// TestInspectFds lays fds out as systemd would, at consecutive numbers
// (high ones, so that nothing else in the test process is touched), and
// checks what inspectFds says about each.
func TestInspectFds(t *testing.T) {
	dir := shortTempDir(t)
	tcpLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	unixLn, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()
	gram, err := net.ListenPacket("unixgram", filepath.Join(dir, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer gram.Close()
	client, err := net.Dial("tcp4", tcpLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	regular, err := os.Create(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()

	type want struct {
		name, network, addr string
		listening, bad      bool
	}
	var sources []*os.File
	var wants []want
	add := func(f *os.File, w want) { sources = append(sources, f); wants = append(wants, w) }
	add(fileOf(t, tcpLn.(*net.TCPListener)), want{"web", "tcp4", tcpLn.Addr().String(), true, false})
	add(fileOf(t, udp.(*net.UDPConn)), want{"dns", "udp4", udp.LocalAddr().String(), false, false})
	add(fileOf(t, unixLn.(*net.UnixListener)), want{"api", "unix", unixLn.Addr().String(), true, false})
	add(fileOf(t, gram.(*net.UnixConn)), want{"log", "unixgram", gram.LocalAddr().String(), false, false})
	add(fileOf(t, client.(*net.TCPConn)), want{"conn", "tcp4", client.LocalAddr().String(), false, false})
	add(regular, want{"state", "", "", false, false})
	if runtime.GOOS != "darwin" && runtime.GOOS != "ios" { // no SOCK_SEQPACKET for AF_UNIX there
		pkt, err := net.Listen("unixpacket", filepath.Join(dir, "p"))
		if err != nil {
			t.Fatal(err)
		}
		defer pkt.Close()
		add(fileOf(t, pkt.(*net.UnixListener)), want{"ctl", "unixpacket", pkt.Addr().String(), true, false})
	}
	add(nil, want{"gone", "", "", false, true}) // a closed fd

	const start = 700
	names := make([]string, len(wants))
	for i, w := range wants {
		names[i] = w.name
		if sources[i] == nil {
			continue
		}
		// dup2 leaves the new fd without FD_CLOEXEC, as systemd passes it.
		if err := unix.Dup2(int(sources[i].Fd()), start+i); err != nil {
			t.Fatal(err)
		}
		if cloexec(t, start+i) {
			t.Fatal("dup2 set FD_CLOEXEC")
		}
	}
	got, err := inspectFds(start, names)
	for _, l := range got {
		if l.File != nil {
			defer l.File.Close()
		}
	}
	if len(got) != len(wants) {
		t.Fatalf("got %d fds, want %d", len(got), len(wants))
	}
	// The error names the closed fd, and only it.
	var fe *FdError
	if !errors.As(err, &fe) || fe.Fd != start+len(wants)-1 || fe.Name != "gone" || !errors.Is(err, syscall.EBADF) {
		t.Fatalf("err = %v, want EBADF for fd %d", err, start+len(wants)-1)
	}
	for i, w := range wants {
		l := got[i]
		if l.Fd != start+i || l.Name != w.name {
			t.Errorf("fd %d: got fd %d named %q", start+i, l.Fd, l.Name)
		}
		if w.bad {
			if l.Err == nil || l.File != nil || !errors.Is(l.Err, syscall.EBADF) {
				t.Errorf("%s: closed fd reported as %+v", w.name, l)
			}
			continue
		}
		if l.Err != nil || l.File == nil || l.File.Fd() != uintptr(l.Fd) {
			t.Errorf("%s: %+v", w.name, l)
			continue
		}
		if !cloexec(t, l.Fd) {
			t.Errorf("%s: fd %d not close-on-exec", w.name, l.Fd)
		}
		if l.Network != w.network || l.Listening != w.listening {
			t.Errorf("%s: network %q listening %v, want %q %v", w.name, l.Network, l.Listening, w.network, w.listening)
		}
		if w.network == "" {
			if l.Addr != nil || l.Type != 0 || l.Family != 0 {
				t.Errorf("%s: not a socket, but %+v", w.name, l)
			}
			continue
		}
		if l.Addr == nil || l.Addr.String() != w.addr || l.Addr.Network() != networkOfAddr(w.network) {
			t.Errorf("%s: addr %v, want %s %s", w.name, l.Addr, networkOfAddr(w.network), w.addr)
		}
	}
	// What Upgrader.Listen will ask.
	if !got[0].Matches("tcp", tcpLn.Addr().String()) || !got[1].Matches("udp", udp.LocalAddr().String()) ||
		!got[2].Matches("unix", unixLn.Addr().String()) || got[4].Matches("tcp", client.LocalAddr().String()) {
		t.Error("Matches disagrees with the sockets' real addresses")
	}
	// The Files are usable as what they are.
	ln, err := net.FileListener(got[0].File)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// networkOfAddr is what the net package puts in an Addr's Network().
func networkOfAddr(network string) string {
	switch network {
	case "tcp4", "tcp6":
		return "tcp"
	case "udp4", "udp6":
		return "udp"
	}
	return network
}

// TestListenFdsEnv checks, in this process, the cases that never reach
// an fd: the variables are removed whatever they held.
func TestListenFdsEnv(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name      string
		pid, fds  string
		names     string
		wantError bool
	}{
		{"another process", "1", "2", "a:b", false},
		{"garbage pid", "x", "2", "a:b", true},
		{"garbage fds", pid, "many", "a:b", true},
		{"negative fds", pid, "-3", "", true},
		{"huge fds", pid, "2147483647", "", true},
		{"name count", pid, "2", "a", true},
		{"bad name", pid, "1", "\x1b[31m", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvListenPID, tt.pid)
			t.Setenv(EnvListenFds, tt.fds)
			t.Setenv(EnvListenFdNames, tt.names)
			fds, err := ListenFds()
			if fds != nil || (err != nil) != tt.wantError {
				t.Fatalf("ListenFds() = %v, %v", fds, err)
			}
			for _, v := range []string{EnvListenPID, EnvListenFds, EnvListenFdNames} {
				if val, ok := os.LookupEnv(v); ok {
					t.Errorf("%s=%q left in the environment", v, val)
				}
			}
		})
	}
	// Not activated at all.
	if fds, err := ListenFds(); fds != nil || err != nil {
		t.Fatalf("ListenFds() = %v, %v without variables", fds, err)
	}
}
