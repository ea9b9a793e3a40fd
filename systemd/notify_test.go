//go:build unix

package systemd

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeSystemd is the receiving end of a notification socket, as the
// service manager holds it.
type fakeSystemd struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
}

// shortTempDir is t.TempDir for socket paths, which must fit in sun_path
// (t.TempDir embeds the test's name).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func listenNotify(t *testing.T, addr string) *fakeSystemd {
	t.Helper()
	if addr == "" {
		addr = filepath.Join(shortTempDir(t), "notify")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakeSystemd{t: t, conn: conn, addr: addr}
}

// recv returns the next message and the files it carried; the test owns
// (and closes) them.
func (s *fakeSystemd) recv() (string, []*os.File) {
	s.t.Helper()
	buf := make([]byte, MaxMessageSize+1)
	oob := make([]byte, unix.CmsgSpace(4*MaxNotifyFds))
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		s.t.Fatal(err)
	}
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		s.t.Fatalf("truncated message: flags %#x", flags)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		s.t.Fatal(err)
	}
	var files []*os.File
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			s.t.Fatal(err)
		}
		for _, fd := range fds {
			f := os.NewFile(uintptr(fd), "received")
			s.t.Cleanup(func() { f.Close() })
			files = append(files, f)
		}
	}
	return string(buf[:n]), files
}

func newTestNotifier(t *testing.T, s *fakeSystemd) *Notifier {
	t.Helper()
	t.Setenv(EnvNotifySocket, s.addr)
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	if n.Socket() != s.addr {
		t.Fatalf("Socket() = %q, want %q", n.Socket(), s.addr)
	}
	return n
}

func TestNotifyMessages(t *testing.T) {
	s := listenNotify(t, "")
	n := newTestNotifier(t, s)
	tests := []struct {
		send func() error
		want string
	}{
		{func() error { return n.Ready("") }, "READY=1"},
		{func() error { return n.Ready("serving on :8080") }, "READY=1\nSTATUS=serving on :8080"},
		{func() error { return n.Status("upgrading") }, "STATUS=upgrading"},
		{func() error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
		{func() error { return n.ExtendTimeout(1500 * time.Nanosecond) }, "EXTEND_TIMEOUT_USEC=2"},
		{func() error { return n.MainPIDReady(4242, "") }, "MAINPID=4242\nREADY=1"},
		{func() error { return n.MainPIDReady(4242, "upgraded") }, "MAINPID=4242\nREADY=1\nSTATUS=upgraded"},
		{func() error { return n.Ready("upgrade failed: child exited") }, "READY=1\nSTATUS=upgrade failed: child exited"},
		{func() error { return n.Stopping("") }, "STOPPING=1"},
		{func() error { return n.Stopping("draining") }, "STOPPING=1\nSTATUS=draining"},
		{func() error { return n.RemoveFiles("web") }, "FDSTOREREMOVE=1\nFDNAME=web"},
		{func() error { return n.Notify(Watchdog) }, "WATCHDOG=1"},
		{func() error { return n.Notify("X_CUSTOM=a b=c", Status("")) }, "X_CUSTOM=a b=c\nSTATUS="},
	}
	for _, tt := range tests {
		if err := tt.send(); err != nil {
			t.Fatalf("sending %q: %v", tt.want, err)
		}
		if got, files := s.recv(); got != tt.want || len(files) != 0 {
			t.Errorf("got %q with %d fds, want %q", got, len(files), tt.want)
		}
	}
}

func TestNotifyReloading(t *testing.T) {
	s := listenNotify(t, "")
	n := newTestNotifier(t, s)
	before, err := Monotonic()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Reloading("upgrading to v2"); err != nil {
		t.Fatal(err)
	}
	after, err := Monotonic()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.recv()
	lines := strings.Split(got, "\n")
	if len(lines) != 3 || lines[0] != "RELOADING=1" || lines[2] != "STATUS=upgrading to v2" ||
		!strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("got %q", got)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	// The value is a CLOCK_MONOTONIC reading taken between ours.
	if usec < before.Microseconds() || usec > after.Microseconds()+1 {
		t.Errorf("MONOTONIC_USEC=%d not within [%d, %d]", usec, before.Microseconds(), after.Microseconds()+1)
	}
}

func sameFile(t *testing.T, a, b *os.File) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(b.Fd()), &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestNotifyStoreFiles(t *testing.T) {
	s := listenNotify(t, "")
	n := newTestNotifier(t, s)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lnFile, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lnFile.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	if err := n.StoreFiles("web", lnFile, w); err != nil {
		t.Fatal(err)
	}
	got, files := s.recv()
	if got != "FDSTORE=1\nFDNAME=web" {
		t.Fatalf("got %q", got)
	}
	if len(files) != 2 {
		t.Fatalf("got %d fds, want 2", len(files))
	}
	// The received fds are the same open files, not copies of their
	// names: same inode, same bound address, and data written through
	// the received pipe end arrives.
	if !sameFile(t, files[0], lnFile) || !sameFile(t, files[1], w) {
		t.Fatal("received fds are not the sent files")
	}
	sa, err := unix.Getsockname(int(files[0].Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if port := sa.(*unix.SockaddrInet4).Port; port != ln.Addr().(*net.TCPAddr).Port {
		t.Errorf("received socket bound to port %d, want %d", port, ln.Addr().(*net.TCPAddr).Port)
	}
	if _, err := files[1].Write([]byte("through the store")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	k, err := r.Read(buf)
	if err != nil || string(buf[:k]) != "through the store" {
		t.Fatalf("read %q, %v", buf[:k], err)
	}
	// The sender keeps its own fds.
	if _, err := unix.FcntlInt(lnFile.Fd(), unix.F_GETFD, 0); err != nil {
		t.Errorf("sender's fd: %v", err)
	}

	if err := n.NotifyWithFds([]int{int(r.Fd())}, FdStore, FdName("pipe"), "FDPOLL=0"); err != nil {
		t.Fatal(err)
	}
	if got, files := s.recv(); got != "FDSTORE=1\nFDNAME=pipe\nFDPOLL=0" || len(files) != 1 || !sameFile(t, files[0], r) {
		t.Fatalf("got %q with %d fds", got, len(files))
	}
}

func TestNotifyMissingSocket(t *testing.T) {
	dir := shortTempDir(t)
	check := func(t *testing.T, socket string, want error) {
		t.Helper()
		t.Setenv(EnvNotifySocket, socket)
		n, err := NewNotifier()
		if err != nil {
			t.Fatal(err)
		}
		err = n.Ready("")
		var ne *NotifyError
		if !errors.As(err, &ne) || ne.Socket != socket || !errors.Is(err, want) {
			t.Fatalf("Ready() = %v, want a *NotifyError for %s wrapping %v", err, socket, want)
		}
		if !strings.HasPrefix(err.Error(), "systemd: notify socket "+socket+": ") {
			t.Errorf("error %q does not say which socket", err)
		}
	}
	t.Run("no file", func(t *testing.T) {
		check(t, filepath.Join(dir, "absent"), fs.ErrNotExist)
	})
	t.Run("nobody listening", func(t *testing.T) {
		path := filepath.Join(dir, "stale")
		// A socket file left behind by a process that is gone.
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		check(t, path, syscall.ECONNREFUSED)
	})
}

func TestNotifyNoSocket(t *testing.T) {
	t.Setenv(EnvNotifySocket, "")
	os.Unsetenv(EnvNotifySocket)
	n, err := NewNotifier()
	if n != nil || err != ErrNoSocket {
		t.Fatalf("NewNotifier() = %v, %v; want nil, ErrNoSocket", n, err)
	}
	// A nil Notifier is usable and says why it sends nothing.
	for _, err := range []error{n.Ready("x"), n.Reloading(""), n.Stopping(""), n.Status("x"),
		n.ExtendTimeout(time.Second), n.MainPIDReady(2, ""), n.StoreFiles("x"), n.RemoveFiles("x")} {
		if err != ErrNoSocket {
			t.Errorf("nil Notifier: %v, want ErrNoSocket", err)
		}
	}
	if n.Socket() != "" {
		t.Error("nil Notifier has a socket")
	}
}

func TestNotifierKeepsEnvironment(t *testing.T) {
	s := listenNotify(t, "")
	newTestNotifier(t, s)
	if got := os.Getenv(EnvNotifySocket); got != s.addr {
		t.Fatalf("NOTIFY_SOCKET = %q after NewNotifier, want it kept (%q)", got, s.addr)
	}
}

func TestNotifierForBadAddress(t *testing.T) {
	for _, addr := range []string{"relative/sock", "vsock:2:1234", "/" + strings.Repeat("x", 200)} {
		if _, err := NotifierFor(addr); err == nil || !strings.HasPrefix(err.Error(), "systemd: ") {
			t.Errorf("NotifierFor(%q) = %v, want an error", addr, err)
		}
	}
	if _, err := NotifierFor(""); err != ErrNoSocket {
		t.Errorf("NotifierFor(\"\") = %v, want ErrNoSocket", err)
	}
}

func TestNotifyInvalid(t *testing.T) {
	s := listenNotify(t, "")
	n := newTestNotifier(t, s)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	many := make([]int, MaxNotifyFds+1)
	for i := range many {
		many[i] = int(r.Fd())
	}
	tests := []struct {
		name string
		send func() error
	}{
		{"nothing", func() error { return n.Notify() }},
		{"newline in status", func() error { return n.Status("line one\nREADY=1") }},
		{"NUL in status", func() error { return n.Status("a\x00b") }},
		{"no equals sign", func() error { return n.Notify("READY") }},
		{"empty key", func() error { return n.Notify("=1") }},
		{"lower-case key", func() error { return n.Notify("ready=1") }},
		{"key with newline", func() error { return n.Notify("READY\nSTOPPING=1") }},
		{"colon in fd name", func() error { return n.RemoveFiles("a:b") }},
		{"control byte in fd name", func() error { return n.RemoveFiles("a\tb") }},
		{"fd name too long", func() error { return n.RemoveFiles(strings.Repeat("n", MaxFdNameLen+1)) }},
		{"non-ASCII fd name", func() error { return n.RemoveFiles("wéb") }},
		{"MAINPID zero", func() error { return n.MainPIDReady(0, "") }},
		{"MAINPID negative", func() error { return n.MainPIDReady(-5, "") }},
		{"MAINPID garbage", func() error { return n.Notify("MAINPID=12a") }},
		{"usec garbage", func() error { return n.Notify("EXTEND_TIMEOUT_USEC=-1") }},
		{"too long", func() error { return n.Status(strings.Repeat("s", MaxMessageSize)) }},
		{"fds without FDSTORE", func() error { return n.NotifyWithFds([]int{int(r.Fd())}, Ready) }},
		{"too many fds", func() error { return n.NotifyWithFds(many, FdStore, FdName("x")) }},
	}
	for _, tt := range tests {
		err := tt.send()
		if !errors.Is(err, ErrInvalidState) {
			t.Errorf("%s: %v, want ErrInvalidState", tt.name, err)
		}
	}
	// Nothing reached the socket: the next message is the first one.
	if err := n.Ready(""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.recv(); got != Ready {
		t.Fatalf("got %q after invalid messages", got)
	}
	// A name of exactly the maximum length and the empty name are valid.
	if err := n.RemoveFiles(strings.Repeat("n", MaxFdNameLen)); err != nil {
		t.Error(err)
	}
	s.recv()
	if err := n.RemoveFiles(""); err != nil {
		t.Error(err)
	}
	s.recv()
}

// TestNotifyBarrier: Barrier returns once the manager has closed the fd
// that came with BARRIER=1, that is once it has handled what came before,
// and says so when the manager does not answer in time.
func TestNotifyBarrier(t *testing.T) {
	s := listenNotify(t, "")
	n := newTestNotifier(t, s)
	if err := n.Notify(MainPID(4242), Ready); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Barrier(time.Minute) }()
	if msg, _ := s.recv(); msg != "MAINPID=4242\nREADY=1" {
		t.Fatalf("first message %q", msg)
	}
	msg, files := s.recv()
	if msg != Barrier || len(files) != 1 {
		t.Fatalf("barrier message %q with %d fds, want %q with one", msg, len(files), Barrier)
	}
	select {
	case err := <-done:
		t.Fatalf("Barrier returned (%v) before the manager closed its fd", err)
	default:
	}
	files[0].Close()
	if err := <-done; err != nil {
		t.Errorf("Barrier after the manager closed its fd: %v", err)
	}

	// A manager that holds on to the fd.
	go func() { done <- n.Barrier(10 * time.Millisecond) }()
	_, files = s.recv()
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Barrier that the manager never answers: %v, want a deadline error", err)
	}
	files[0].Close()
}
