//go:build linux

package tableflip

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/systemd"
	"golang.org/x/sys/unix"
)

// fdStoreEnv turns on Options.Systemd.FdStore in the sdserver helper.
const fdStoreEnv = "TABLEFLIP_TEST_FDSTORE"

func init() { registerHelper("sdserver", helperSystemdServer) }

// helperSystemdServer is one generation of a test server with
// Options.Systemd set. It prints what helperServer prints ("ready <pid>
// <tcp> <udp>", "event <pid> <text>"; <udp> is "-" in mode tcp-only) and
// logs to stderr. It answers one line command per connection: pid,
// upgrade, stop, inode, nonblock, waitparent.
func helperSystemdServer() int {
	mode := readMode()
	say := func(format string, args ...any) {
		fmt.Printf("event %d %s\n", os.Getpid(), fmt.Sprintf(format, args...))
	}
	if mode == "exit1" {
		os.Exit(1)
	}
	timeout, _ := time.ParseDuration(os.Getenv(timeoutEnv))
	upg, err := New(Options{
		PIDFile:        os.Getenv(pidFileEnv),
		UpgradeTimeout: timeout,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Systemd:        &SystemdOptions{FdStore: os.Getenv(fdStoreEnv) != ""},
		WriteState:     sdWriteState(),
	})
	if err != nil {
		say("new-error %v", err)
		return 1
	}
	sdReadState(upg, say)
	defer upg.Stop()
	if mode == "hang" {
		say("hanging")
		select {}
	}

	tcpAddr := os.Getenv(tcpAddrEnv)
	if tcpAddr == "" {
		tcpAddr = "127.0.0.1:0"
	}
	ln, err := upg.Listen("tcp", tcpAddr)
	if err != nil {
		say("listen-error %v", err)
		return 1
	}
	var pc net.PacketConn
	udp := "-"
	if mode != "tcp-only" {
		if pc, err = upg.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			say("listen-error %v", err)
			return 1
		}
		udp = pc.LocalAddr().String()
	}
	if err := upg.Ready(); err != nil {
		say("ready-error %v", err)
		return 1
	}
	fmt.Printf("ready %d %s %s\n", os.Getpid(), ln.Addr(), udp)

	var conns connServer
	conns.serve(ln, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewScanner(c)
		if !r.Scan() {
			return
		}
		var reply string
		switch cmd := r.Text(); cmd {
		case "pid":
			reply = strconv.Itoa(os.Getpid())
		case "upgrade":
			if err := upg.Upgrade(); err != nil {
				reply = "error " + err.Error()
			} else {
				reply = "ok"
			}
		case "stop":
			upg.Stop()
			reply = "stopped"
		case "inode":
			reply = socketInode(ln.(syscall.Conn))
		case "nonblock":
			reply = nonblocking(ln)
		case "waitparent":
			reply = fmt.Sprint(upg.WaitForParent(context.Background()))
		default:
			reply = "unknown command " + cmd
		}
		fmt.Fprintln(c, reply)
	})
	if pc != nil {
		go func() {
			buf := make([]byte, 64)
			for {
				_, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(strconv.Itoa(os.Getpid())), addr)
			}
		}()
	}
	<-upg.Exit()
	ln.Close()
	if pc != nil {
		pc.Close()
	}
	conns.wait()
	say("exiting")
	return 0
}

// socketInode names the socket behind c as the kernel does.
func socketInode(c syscall.Conn) string {
	rc, err := c.SyscallConn()
	if err != nil {
		return err.Error()
	}
	var st unix.Stat_t
	rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("socket:[%d]", st.Ino)
}

// fakeSystemd is a notify socket the test listens on. It receives each
// sender's credentials, as systemd does to apply NotifyAccess=, and, as
// systemd does, answers a BARRIER=1 as soon as it has read what came
// before, whether or not the test has looked at the messages yet.
type fakeSystemd struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
	msgs chan notifyMsg
}

type notifyMsg struct {
	text  string
	pid   int32
	files []*os.File
	err   error // reading failed; the socket is done
}

// sentinel is what none sends itself to know that it has seen every
// message queued before.
const sentinel = "TEST_SENTINEL=1"

func listenNotify(t *testing.T) *fakeSystemd {
	t.Helper()
	addr := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := conn.SyscallConn()
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeSystemd{t: t, conn: conn, addr: addr, msgs: make(chan notifyMsg, 1000)}
	go func() {
		defer close(s.msgs)
		for {
			m := s.read()
			if m.text == systemd.Barrier {
				for _, f := range m.files {
					f.Close()
				}
			}
			s.msgs <- m
			if m.err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		for m := range s.msgs {
			for _, f := range m.files {
				f.Close()
			}
		}
	})
	return s
}

// next returns the next message. The deadline only bounds a failure:
// every message the test waits for was sent before what it waited on.
func (s *fakeSystemd) next() notifyMsg {
	s.t.Helper()
	select {
	case m := <-s.msgs:
		if m.err != nil {
			s.t.Fatalf("notify socket: %v", m.err)
		}
		for _, f := range m.files {
			s.t.Cleanup(func() { f.Close() })
		}
		return m
	case <-time.After(time.Minute):
		s.t.Fatalf("no notify message within a minute")
	}
	panic("not reached")
}

func (s *fakeSystemd) read() notifyMsg {
	buf := make([]byte, systemd.MaxMessageSize+1)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*systemd.MaxNotifyFds))
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return notifyMsg{err: err}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return notifyMsg{err: fmt.Errorf("truncated message: flags %#x", flags)}
	}
	m := notifyMsg{text: string(buf[:n])}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return notifyMsg{err: err}
	}
	for i := range cmsgs {
		switch cmsgs[i].Header.Type {
		case unix.SCM_CREDENTIALS:
			cred, err := unix.ParseUnixCredentials(&cmsgs[i])
			if err != nil {
				return notifyMsg{err: err}
			}
			m.pid = cred.Pid
		case unix.SCM_RIGHTS:
			fds, err := unix.ParseUnixRights(&cmsgs[i])
			if err != nil {
				return notifyMsg{err: err}
			}
			for _, fd := range fds {
				m.files = append(m.files, os.NewFile(uintptr(fd), "stored"))
			}
		}
	}
	return m
}

// expect reads the next message and checks its sender and text; the
// text is a regular expression, matched whole. It returns the
// submatches.
func (s *fakeSystemd) expect(from int, pattern string) (notifyMsg, []string) {
	s.t.Helper()
	m := s.next()
	re := regexp.MustCompile("(?s)^" + pattern + "$")
	sub := re.FindStringSubmatch(m.text)
	if sub == nil {
		s.t.Fatalf("notify message %q from pid %d, want %q", m.text, m.pid, pattern)
	}
	if int(m.pid) != from {
		s.t.Errorf("notify message %q sent by pid %d, want %d (the main process)", m.text, m.pid, from)
	}
	return m, sub
}

// none checks that nothing more was sent. Messages are queued when they
// are sent, so once the senders have exited, what comes before a message
// the test sends itself is all there is.
func (s *fakeSystemd) none() {
	s.t.Helper()
	c, err := net.Dial("unixgram", s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(sentinel)); err != nil {
		s.t.Fatal(err)
	}
	for {
		m := s.next()
		if m.text == sentinel {
			return
		}
		s.t.Errorf("unexpected notify message %q from pid %d", m.text, m.pid)
	}
}

func q(s string) string { return regexp.QuoteMeta(s) }

func monotonicUsec(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// sdLog collects a process's stderr and says when a line has a prefix.
type sdLog struct {
	mu    sync.Mutex
	b     strings.Builder
	lines chan string
}

func (l *sdLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits for a line containing text.
func (l *sdLog) waitFor(t *testing.T, text string) {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				t.Fatalf("stderr ended before %q; it said:\n%s", text, l)
			}
			if strings.Contains(line, text) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q on stderr within a minute; it said:\n%s", text, l)
		}
	}
}

// sdEnv is the environment of an sdserver helper in dir.
func sdEnv(dir string, extra ...string) []string {
	return append([]string{
		helper("sdserver"),
		modeFileEnv + "=" + filepath.Join(dir, "mode"),
		pidFileEnv + "=" + filepath.Join(dir, "server.pid"),
	}, extra...)
}

// startSD starts cmd, whose process is (or execs) the first generation,
// and waits for it to be ready unless wait is false.
func startSD(t *testing.T, cmd *exec.Cmd, dir string, wait bool) (*server, *sdLog) {
	t.Helper()
	s := &server{t: t, dir: dir, lines: make(chan string, 100), seen: map[int]bool{}, pidFile: filepath.Join(dir, "server.pid")}
	if _, err := os.Stat(filepath.Join(dir, "mode")); err != nil {
		s.setMode("serve")
	}
	log := &sdLog{lines: make(chan string, 1000)}
	// Pipes of our own: Wait, which reaps the first generation, would
	// close those of StdoutPipe, and the later generations would die of
	// SIGPIPE.
	stdout, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		t.Fatal(err)
	}
	s.first = cmd
	go func() {
		defer close(log.lines)
		defer stderr.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			log.mu.Lock()
			log.b.WriteString(sc.Text() + "\n")
			log.mu.Unlock()
			select {
			case log.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		defer close(s.lines)
		defer stdout.Close()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		s.cleanup()
		if t.Failed() {
			t.Logf("stderr of the generations:\n%s", log)
		}
	})
	if wait {
		s.waitReady()
	}
	return s, log
}

func (s *server) waitReady() {
	s.t.Helper()
	fields := s.waitLine("ready ")
	s.pid, _ = strconv.Atoi(fields[1])
	s.tcp, s.udp = fields[2], fields[3]
}

// helperCmd runs the test binary as the sdserver helper.
func helperCmd(env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// activatedCmd runs the helper as systemd starts a service with fds:
// /bin/sh sets LISTEN_PID to its own pid and execs the helper, which
// keeps that pid. files become fds 3, 4, ...; a nil one is a closed fd.
func activatedCmd(files []*os.File, names *string, env ...string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" -test.run='^$'`, os.Args[0])
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", systemd.EnvListenFds, len(files)))
	if names != nil {
		cmd.Env = append(cmd.Env, systemd.EnvListenFdNames+"="+*names)
	}
	cmd.ExtraFiles = files
	return cmd
}

// sockname is the local address of a socket the test received.
func sockname(t *testing.T, f *os.File) string {
	t.Helper()
	sa, err := unix.Getsockname(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return fmt.Sprintf("%s:%d", net.IP(sa.Addr[:]), sa.Port)
	case *unix.SockaddrUnix:
		return sa.Name
	}
	return fmt.Sprintf("%T", sa)
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestSystemdNotifySequence checks every message, and who sends it, for
// a start, a successful upgrade, a new generation that crashes, one that
// hangs past UpgradeTimeout, and a final stop.
func TestSystemdNotifySequence(t *testing.T) {
	sd := listenNotify(t)
	dir := t.TempDir()
	s, _ := startSD(t, helperCmd(sdEnv(dir, "NOTIFY_SOCKET="+sd.addr, timeoutEnv+"=2s")...), dir, true)
	p1 := s.pid
	sd.expect(p1, q(fmt.Sprintf("READY=1\nSTATUS=Serving (pid %d)", p1)))

	before := monotonicUsec(t)
	p2 := s.upgrade()
	after := monotonicUsec(t)
	_, sub := sd.expect(p1, q("RELOADING=1\nMONOTONIC_USEC=")+`(\d+)`+q(fmt.Sprintf("\nSTATUS=Upgrading (pid %d)", p1)))
	if usec, _ := strconv.ParseInt(sub[1], 10, 64); usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d, want the time the upgrade started, in [%d, %d]", usec, before, after)
	}
	// 2s for the new generation, and 2s between SIGTERM and SIGKILL.
	sd.expect(p1, q(fmt.Sprintf("EXTEND_TIMEOUT_USEC=4000000\nSTATUS=Upgrading: new generation (pid %d) is starting", p2)))
	sd.expect(p1, q(fmt.Sprintf("MAINPID=%d\nREADY=1\nSTATUS=Serving (pid %d); upgraded from pid %d", p2, p2, p1)))
	// And it does not exit before systemd has taken that in.
	sd.expect(p1, q(systemd.Barrier))

	for _, tc := range []struct{ mode, failure string }{
		{"exit1", "tableflip: new generation exited before it was ready (pid %s, exit status 1)"},
		{"hang", "tableflip: new generation timed out (pid %s, killed by signal terminated)"},
	} {
		s.failedUpgrade(tc.mode)
		sd.expect(p2, q("RELOADING=1\nMONOTONIC_USEC=")+`\d+`+q(fmt.Sprintf("\nSTATUS=Upgrading (pid %d)", p2)))
		_, sub := sd.expect(p2, q("EXTEND_TIMEOUT_USEC=4000000\nSTATUS=Upgrading: new generation (pid ")+`(\d+)`+q(") is starting"))
		failure := fmt.Sprintf(tc.failure, sub[1])
		sd.expect(p2, q(fmt.Sprintf("READY=1\nSTATUS=Upgrade failed; serving (pid %d): %s", p2, failure)))
	}

	if got := s.command("stop"); got != "stopped" {
		t.Fatalf("stop: %q", got)
	}
	sd.expect(p2, q(fmt.Sprintf("STOPPING=1\nSTATUS=Stopping (pid %d)", p2)))
	s.waitEvent(p2, "exiting")
	s.reap(p2)
	s.pid = 0
	sd.none()
}

// fakeStore keeps fds as systemd's fd store does: by name, ignoring an fd
// it already holds, removing by name.
type fakeStore struct {
	names []string
	fds   map[string][]*os.File
}

func (st *fakeStore) apply(t *testing.T, m notifyMsg) {
	t.Helper()
	if st.fds == nil {
		st.fds = map[string][]*os.File{}
	}
	lines := strings.Split(m.text, "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "FDNAME=") {
		t.Fatalf("store message %q", m.text)
	}
	name := strings.TrimPrefix(lines[1], "FDNAME=")
	switch lines[0] {
	case "FDSTOREREMOVE=1":
		delete(st.fds, name)
		st.names = slices.DeleteFunc(st.names, func(n string) bool { return n == name })
	case "FDSTORE=1":
		for _, f := range m.files {
			dup := false
			for _, have := range st.fds {
				for _, h := range have {
					dup = dup || inode(t, h) == inode(t, f)
				}
			}
			if !dup {
				if _, ok := st.fds[name]; !ok {
					st.names = append(st.names, name)
				}
				st.fds[name] = append(st.fds[name], f)
			}
		}
	default:
		t.Fatalf("store message %q", m.text)
	}
}

// TestSystemdFdStore checks what each generation stores and removes, and
// then hands the store back, as systemd does after a crash, to a new
// process that serves at once on the very socket, bound to port 0, that
// a client connected to while no process was running.
func TestSystemdFdStore(t *testing.T) {
	sd := listenNotify(t)
	dir := t.TempDir()
	env := sdEnv(dir, "NOTIFY_SOCKET="+sd.addr, fdStoreEnv+"=1")
	s, _ := startSD(t, helperCmd(env...), dir, true)
	const (
		tcpName = "tableflip.L.tcp.127.0.0.1%3A0"
		udpName = "tableflip.P.udp.127.0.0.1%3A0"
	)
	var store fakeStore
	stored := func(from int, name, addr string) *os.File {
		t.Helper()
		m, _ := sd.expect(from, q("FDSTORE=1\nFDNAME="+name))
		if len(m.files) != 1 {
			t.Fatalf("%s: %d fds, want 1", name, len(m.files))
		}
		if got := sockname(t, m.files[0]); got != addr {
			t.Errorf("%s: stored socket bound to %s, want %s", name, got, addr)
		}
		store.apply(t, m)
		return m.files[0]
	}

	p1 := s.pid
	sd.expect(p1, q(fmt.Sprintf("READY=1\nSTATUS=Serving (pid %d)", p1)))
	tcp1 := stored(p1, tcpName, s.tcp)
	stored(p1, udpName, s.udp)

	// The new generation stores the same sockets once its parent, which
	// made it the main process, has exited.
	p2 := s.upgrade()
	sd.expect(p1, "RELOADING=1\n.*")
	sd.expect(p1, "EXTEND_TIMEOUT_USEC=.*")
	sd.expect(p1, q(fmt.Sprintf("MAINPID=%d\nREADY=1\n", p2))+".*")
	sd.expect(p1, q(systemd.Barrier))
	if tcp2 := stored(p2, tcpName, s.tcp); inode(t, tcp2) != inode(t, tcp1) {
		t.Errorf("generation %d stored another TCP socket", p2)
	}
	stored(p2, udpName, s.udp)

	// A generation that no longer asks for the UDP socket removes it.
	s.setMode("tcp-only")
	if got := s.command("upgrade"); got != "ok" {
		t.Fatalf("upgrade: %q", got)
	}
	s.waitReady()
	p3 := s.pid
	s.waitEvent(p2, "exiting")
	s.reap(p2)
	sd.expect(p2, "RELOADING=1\n.*")
	sd.expect(p2, "EXTEND_TIMEOUT_USEC=.*")
	sd.expect(p2, q(fmt.Sprintf("MAINPID=%d\nREADY=1\n", p3))+".*")
	sd.expect(p2, q(systemd.Barrier))
	m, _ := sd.expect(p3, q("FDSTOREREMOVE=1\nFDNAME="+udpName))
	store.apply(t, m)
	stored(p3, tcpName, s.tcp)
	if !slices.Equal(store.names, []string{tcpName}) {
		t.Fatalf("store holds %q, want only %s", store.names, tcpName)
	}

	// A crash: only the store holds the socket, and keeps the client's
	// connection in its queue.
	syscall.Kill(p3, syscall.SIGKILL)
	var ws syscall.WaitStatus
	syscall.Wait4(p3, &ws, 0, nil)
	s.pid = 0
	c, err := net.Dial("tcp", s.tcp)
	if err != nil {
		t.Fatalf("dial while only the store holds the socket: %v", err)
	}
	defer c.Close()
	fmt.Fprintln(c, "pid")

	names := strings.Join(store.names, ":")
	s2, _ := startSD(t, activatedCmd(store.fds[tcpName], &names, env...), dir, true)
	p4 := s2.pid
	if s2.tcp != s.tcp {
		t.Errorf("after the crash the new process listens on %s, want the stored %s", s2.tcp, s.tcp)
	}
	reply, err := io.ReadAll(c)
	if err != nil || strings.TrimSpace(string(reply)) != strconv.Itoa(p4) {
		t.Errorf("connection made during the crash: %q %v, want pid %d", reply, err, p4)
	}
	sd.expect(p4, q(fmt.Sprintf("READY=1\nSTATUS=Serving (pid %d)", p4)))
	stored(p4, tcpName, s.tcp)
	if got := s2.command("stop"); got != "stopped" {
		t.Fatalf("stop: %q", got)
	}
	sd.expect(p4, q(fmt.Sprintf("STOPPING=1\nSTATUS=Stopping (pid %d)", p4)))
	s2.waitEvent(p4, "exiting")
	s2.reap(p4)
	s2.pid = 0
	sd.none()
}

// socketActivate finds systemd-socket-activate(1). CI installs it (.ci/run)
// and fails rather than skips without it.
func socketActivate(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"systemd-socket-activate", "/usr/bin/systemd-socket-activate",
		"/lib/systemd/systemd-socket-activate", "/usr/lib/systemd/systemd-socket-activate"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("systemd-socket-activate not found (Debian package systemd); CI must have it")
	}
	t.Skip("systemd-socket-activate not found (Debian package systemd)")
	return ""
}

// TestSystemdSocketActivateUnderLoad starts the server under the real
// systemd-socket-activate with a TCP socket named web, which the program
// asks for by name, and upgrades it three times while clients connect
// without pause: not one request fails, and every generation serves on
// the very socket systemd bound.
func TestSystemdSocketActivateUnderLoad(t *testing.T) {
	tool := socketActivate(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the tool cannot bind port 0; this port was free a moment ago
	dir := t.TempDir()
	args := []string{"-l", addr, "--fdname=web"}
	for _, kv := range sdEnv(dir, tcpAddrEnv+"=web", timeoutEnv+"=30s") {
		args = append(args, "-E", kv)
	}
	cmd := exec.Command(tool, append(args, os.Args[0], "-test.run=^$")...)
	s, log := startSD(t, cmd, dir, false)
	log.waitFor(t, "Listening on ")

	// The first connection makes the tool start the server.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "pid")
	s.waitReady()
	if reply, err := io.ReadAll(c); strings.TrimSpace(string(reply)) != strconv.Itoa(s.pid) {
		t.Fatalf("first request: %q %v, want pid %d", reply, err, s.pid)
	}
	if s.tcp != addr || s.pid != cmd.Process.Pid {
		t.Fatalf("pid %d serves on %s, want the tool's pid %d on %s", s.pid, s.tcp, cmd.Process.Pid, addr)
	}
	socket := s.command("inode")

	l := startLoadN(addr, 4)
	for i := range 3 {
		s.upgrade()
		if got := s.command("inode"); got != socket {
			t.Errorf("upgrade %d: generation %d serves on %s, want systemd's %s", i+1, s.pid, got, socket)
		}
	}
	t.Logf("%d requests during 3 upgrades", l.finish(t, false))
	pid := s.pid
	if got := s.command("stop"); got != "stopped" {
		t.Fatalf("stop: %q", got)
	}
	s.waitEvent(pid, "exiting")
	s.reap(pid)
	s.pid = 0
}

// TestSystemdBadInput: broken socket-activation variables, fds that are
// not open, and a notify socket that does not exist are logged as
// warnings; the server serves, on systemd's socket where one is usable.
func TestSystemdBadInput(t *testing.T) {
	listener := func(t *testing.T) (*os.File, string) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f, ln.Addr().String()
	}
	str := func(s string) *string { return &s }
	for _, tc := range []struct {
		name    string
		names   *string
		closed  bool
		warning string
	}{
		{"two names for one fd", str("web:api"), false, "ignoring the names of the fds systemd passed"},
		{"control character", str("we\x01b"), false, "ignoring the names of the fds systemd passed"},
		{"oversized names", str(strings.Repeat("w", 100_000)), false, "ignoring the names of the fds systemd passed"},
		{"closed fd", str("web:gone"), true, "bad file descriptor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, addr := listener(t)
			files := []*os.File{f}
			if tc.closed {
				files = append(files, nil)
			}
			dir := t.TempDir()
			env := sdEnv(dir, tcpAddrEnv+"="+addr)
			s, log := startSD(t, activatedCmd(files, tc.names, env...), dir, true)
			// The test keeps its copy of the socket: the server could not
			// have bound the address itself.
			if s.tcp != addr || s.command("inode") != fmt.Sprintf("socket:[%d]", inode(t, f)) {
				t.Errorf("serves on %s, want systemd's socket on %s", s.tcp, addr)
			}
			if got := s.command("pid"); got != strconv.Itoa(s.pid) {
				t.Errorf("pid: %q", got)
			}
			if !strings.Contains(log.String(), tc.warning) || !strings.Contains(log.String(), "level=WARN") {
				t.Errorf("stderr does not warn %q:\n%s", tc.warning, log)
			}
		})
	}

	t.Run("notify socket missing", func(t *testing.T) {
		dir := t.TempDir()
		missing := filepath.Join(dir, "no-such-dir", "notify")
		s, log := startSD(t, helperCmd(sdEnv(dir, "NOTIFY_SOCKET="+missing)...), dir, true)
		pid := s.upgrade()
		if got := s.command("pid"); got != strconv.Itoa(pid) {
			t.Errorf("pid: %q", got)
		}
		s.command("stop")
		s.waitEvent(pid, "exiting")
		s.reap(pid)
		s.pid = 0
		// The last warning; the others were written before it (the old
		// generation's before it exited), on the same pipe.
		log.waitFor(t, `message=stopping `)
		for _, what := range []string{"ready", "reloading", "extend timeout", "main pid", "stopping"} {
			value := what
			if strings.Contains(what, " ") {
				value = strconv.Quote(what)
			}
			if !strings.Contains(log.String(), `level=WARN msg="tableflip: can't notify systemd" message=`+value+` `) {
				t.Errorf("no warning for %s; stderr:\n%s", what, log)
			}
		}
		if !strings.Contains(log.String(), "no such file or directory") {
			t.Errorf("warnings do not say the socket is missing:\n%s", log)
		}
	})
}

// TestSystemdOff: without Options.Systemd nothing is sent and nothing is
// taken, even under systemd.
func TestSystemdOff(t *testing.T) {
	sd := listenNotify(t)
	s := startServer(t, serverConfig{env: []string{"NOTIFY_SOCKET=" + sd.addr}})
	pid := s.upgrade()
	s.command("stop")
	s.waitEvent(pid, "exiting")
	s.reap(pid)
	s.pid = 0
	sd.none()
}

func TestStoreName(t *testing.T) {
	for _, tc := range []struct {
		k    key
		want string
	}{
		{key{'L', "tcp", "127.0.0.1:8080"}, "tableflip.L.tcp.127.0.0.1%3A8080"},
		{key{'P', "udp6", "[::1]:53"}, "tableflip.P.udp6.[%3A%3A1]%3A53"},
		{key{'L', "unix", "/run/a b%.sock"}, "tableflip.L.unix./run/a b%25.sock"},
		{key{'F', "", "state\n"}, "tableflip.F..state%0A"},
		{key{'L', "unix", strings.Repeat("x", 300)}, ""},
	} {
		if got := storeName(tc.k); got != tc.want {
			t.Errorf("storeName(%v) = %q, want %q", tc.k, got, tc.want)
		}
	}
}
