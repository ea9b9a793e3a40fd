//go:build linux

package tableflip

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"golang.org/x/sys/unix"
)

// The test binary re-runs itself as the generations of a small server. The
// server's behaviour at start comes from a mode file that the test
// rewrites before each upgrade, since every generation shares the first
// one's environment.
const (
	modeFileEnv = "TABLEFLIP_TEST_MODE_FILE"
	pidFileEnv  = "TABLEFLIP_TEST_PID_FILE"
	unixPathEnv = "TABLEFLIP_TEST_UNIX"
	timeoutEnv  = "TABLEFLIP_TEST_TIMEOUT"
	tcpAddrEnv  = "TABLEFLIP_TEST_TCP"
	extraEnv    = "TABLEFLIP_TEST_EXTRA_LISTENERS"
)

func init() { registerHelper("server", helperServer) }

// helperServer is one generation of the test server. It prints one line
// per event to stdout, which all generations share:
//
//	ready <pid> <tcp addr> <udp addr>
//	event <pid> <text>
//
// and answers line commands on its TCP listener: pid, upgrade, fds, stop.
func helperServer() int {
	mode := readMode()
	say := func(format string, args ...any) {
		fmt.Printf("%s %d %s\n", "event", os.Getpid(), fmt.Sprintf(format, args...))
	}
	switch mode {
	case "hang-ignore-term":
		// Before anything else: the parent's deadline may come soon.
		signal.Ignore(syscall.SIGTERM)
	case "exit1":
		os.Exit(1)
	case "exit0":
		os.Exit(0)
	case "panic":
		panic("init failed")
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "speak-other-version":
		v := os.Getenv("TABLEFLIP_HANDOVER")
		_, rest, _ := strings.Cut(v, ";")
		os.Setenv("TABLEFLIP_HANDOVER", fmt.Sprintf("v%d;%s", handover.Version+1, rest))
	}

	timeout, _ := time.ParseDuration(os.Getenv(timeoutEnv))
	var logger *slog.Logger
	if os.Getenv("TABLEFLIP_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	upg, err := New(Options{PIDFile: os.Getenv(pidFileEnv), UpgradeTimeout: timeout, Logger: logger,
		ControlSocket: os.Getenv(controlEnv), ControlSocketGroup: os.Getenv(controlGroupEnv)})
	if err != nil {
		say("new-error %v", err)
		return 1
	}
	defer upg.Stop()

	switch mode {
	case "hang":
		say("hanging")
		select {}
	case "hang-ignore-term":
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
	pc, err := upg.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		say("listen-error %v", err)
		return 1
	}
	var uln net.Listener
	if path := os.Getenv(unixPathEnv); path != "" {
		if uln, err = upg.Listen("unix", path); err != nil {
			say("listen-error %v", err)
			return 1
		}
	}
	extra, _ := strconv.Atoi(os.Getenv(extraEnv))
	for range extra {
		// All under one name: they come back in order.
		if _, err := upg.Listen("tcp", "127.0.0.1:0"); err != nil {
			say("listen-error %v", err)
			return 1
		}
	}
	if c, _ := upg.Conn("tcp", "kept"); c != nil {
		fmt.Fprintf(c, "hello from %d\n", os.Getpid())
		c.Close()
		say("closed kept conn")
	}

	if mode == "wait-before-ready" {
		say("initialising")
		f, err := os.Open(os.Getenv(modeFileEnv) + ".go")
		if err == nil {
			io.Copy(io.Discard, f)
			f.Close()
		}
	}
	if err := upg.Ready(); err != nil {
		_, statErr := os.Stat(os.Getenv(pidFileEnv))
		say("ready-error pidfile-exists=%t %v", statErr == nil, err)
		return 1
	}
	if mode == "ready-twice" {
		say("ready-again %v", upg.Ready())
	}
	fmt.Printf("ready %d %s %s\n", os.Getpid(), ln.Addr(), pc.LocalAddr())
	switch mode {
	case "listen-after-ready", "listen-not-inherited":
		// After Ready, or under a name the parent never had
		// ("tcp4" is not "tcp"): either way a socket of its own.
		late, err := upg.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			say("late-listen error %v", err)
		} else {
			go func() {
				for {
					c, err := late.Accept()
					if err != nil {
						return
					}
					fmt.Fprintln(c, "late")
					c.Close()
				}
			}()
			say("late-listen %s", late.Addr())
		}
	}
	if mode == "spawn" {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"=envcheck")
		out, err := cmd.CombinedOutput()
		say("spawned %q %v", strings.TrimSpace(string(out)), err)
	}

	var conns connServer
	conns.serve(ln, func(c net.Conn) { handleCommands(upg, ln, c) })
	if uln != nil {
		conns.serve(uln, func(c net.Conn) { handleCommands(upg, uln, c) })
	}
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
	go func() {
		if err := upg.WaitForParent(context.Background()); err != nil {
			say("parent-error %v", err)
		}
	}()

	<-upg.Exit()
	ln.Close()
	pc.Close()
	if uln != nil {
		uln.Close()
	}
	conns.wait()
	say("exiting")
	return 0
}

func handleCommands(upg *Upgrader, ln net.Listener, c net.Conn) {
	defer c.Close()
	// One command a connection, closed before the client reads end of
	// file: a client that has its answer leaves nothing open here.
	r := bufio.NewScanner(c)
	if r.Scan() {
		var reply string
		switch cmd := r.Text(); cmd {
		case "pid":
			reply = strconv.Itoa(os.Getpid())
		case "upgrade":
			if err := upg.Upgrade(); err != nil {
				reply = "error " + err.Error() + " " + describeError(err)
			} else {
				reply = "ok"
			}
		case "fds":
			// The parent's handover socket is open until it exits.
			upg.WaitForParent(context.Background())
			reply = strconv.Itoa(countFDs())
		case "keep":
			if err := upg.AddConn("tcp", "kept", c.(Conn)); err != nil {
				reply = "error " + err.Error()
			} else {
				reply = "kept"
			}
		case "waitparent":
			reply = fmt.Sprint(upg.WaitForParent(context.Background()))
		case "hasparent":
			reply = strconv.FormatBool(upg.HasParent())
		case "nonblock":
			reply = nonblocking(ln)
		case "stop":
			upg.Stop()
			reply = "stopped"
		default:
			reply = "unknown command " + cmd
		}
		fmt.Fprintln(c, reply)
	}
}

// nonblocking reports whether ln's descriptor is in non-blocking mode.
func nonblocking(ln net.Listener) string {
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		return err.Error()
	}
	var flags int
	rc.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if err != nil {
		return err.Error()
	}
	return strconv.FormatBool(flags&unix.O_NONBLOCK != 0)
}

// connServer runs a handler for each connection accepted on its
// listeners, in a goroutine of its own, until the listeners close.
type connServer struct {
	accepting, handling sync.WaitGroup
}

func (s *connServer) serve(ln net.Listener, handle func(net.Conn)) {
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.handling.Add(1)
			go func() {
				defer s.handling.Done()
				handle(c)
			}()
		}
	}()
}

// wait returns once the listeners are closed and every handler has
// returned. The accept loops go first: an Add while Wait runs would race.
func (s *connServer) wait() {
	s.accepting.Wait()
	s.handling.Wait()
}

// describeError lists which of the package's errors err is, so that the
// test can check errors.Is and errors.As across the process boundary.
func describeError(err error) string {
	var names []string
	for _, s := range []struct {
		name string
		err  error
	}{
		{"ErrNotReady", ErrNotReady}, {"ErrUpgradeInProgress", ErrUpgradeInProgress},
		{"ErrParentRunning", ErrParentRunning}, {"ErrStopped", ErrStopped},
		{"ErrUpgraded", ErrUpgraded}, {"ErrTimeout", ErrTimeout},
		{"ErrChildExited", ErrChildExited}, {"ErrHandover", ErrHandover},
		{"ErrTooManyGenerations", ErrTooManyGenerations},
	} {
		if errors.Is(err, s.err) {
			names = append(names, s.name)
		}
	}
	var ce *ChildError
	if errors.As(err, &ce) {
		names = append(names, fmt.Sprintf("ChildError{code=%d,signal=%d}", ce.ExitCode, ce.Signal))
	}
	return "[" + strings.Join(names, ",") + "]"
}

func readMode() string {
	b, _ := os.ReadFile(os.Getenv(modeFileEnv))
	return strings.TrimSpace(string(b))
}

// countFDs counts this process's open descriptors, less the one used to
// read the directory.
func countFDs() int {
	dir := "/dev/fd"
	if runtime.GOOS == "linux" {
		dir = "/proc/self/fd"
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	return len(names) - 1
}

// server is the test's handle on a running chain of generations.
type server struct {
	t       testing.TB
	dir     string
	tcp     string
	udp     string
	first   *exec.Cmd
	pid     int
	lines   chan string
	backlog []string
	// seen are the pids of every generation that printed a line.
	seen    map[int]bool
	pidFile string
}

type serverConfig struct {
	env        []string
	executable string
}

// startServer starts the first generation and waits until it is ready.
func startServer(t testing.TB, cfg serverConfig) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{t: t, dir: dir, lines: make(chan string, 100), seen: map[int]bool{}, pidFile: filepath.Join(dir, "server.pid")}
	s.setMode("serve")
	exe := cfg.executable
	if exe == "" {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		modeFileEnv+"="+filepath.Join(dir, "mode"),
		pidFileEnv+"="+s.pidFile,
	)
	if !slices.ContainsFunc(cfg.env, func(kv string) bool { return strings.HasPrefix(kv, helperEnv+"=") }) {
		cmd.Env = append(cmd.Env, helper("server"))
	}
	cmd.Env = append(cmd.Env, cfg.env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s.first = cmd
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		r.Close()
	}()
	t.Cleanup(s.cleanup)
	fields := s.waitLine("ready ")
	s.pid, _ = strconv.Atoi(fields[1])
	s.tcp, s.udp = fields[2], fields[3]
	return s
}

func (s *server) setMode(mode string) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, "mode"), []byte(mode), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// waitLine returns the fields of the first line from any generation that
// starts with prefix, and that an earlier wait has not taken.
func (s *server) waitLine(prefix string) []string {
	s.t.Helper()
	for i, line := range s.backlog {
		if strings.HasPrefix(line, prefix) {
			s.backlog = append(s.backlog[:i], s.backlog[i+1:]...)
			return strings.Fields(line)
		}
	}
	timeout := time.After(time.Minute)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("server output ended while waiting for %q; unclaimed: %q", prefix, s.backlog)
			}
			fields := strings.Fields(line)
			if len(fields) > 1 {
				if pid, err := strconv.Atoi(fields[1]); err == nil {
					s.seen[pid] = true
				}
			}
			if strings.HasPrefix(line, prefix) {
				return fields
			}
			s.backlog = append(s.backlog, line)
		case <-timeout:
			s.t.Fatalf("no line %q from the server within a minute; unclaimed: %q", prefix, s.backlog)
		}
	}
}

// waitEvent waits for an event line from pid whose text starts with text.
func (s *server) waitEvent(pid int, text string) string {
	s.t.Helper()
	prefix := fmt.Sprintf("event %d %s", pid, text)
	return strings.Join(s.waitLine(prefix)[2:], " ")
}

// command sends one line command to whichever generation accepts the
// connection and returns the reply.
func (s *server) command(cmd string) string {
	s.t.Helper()
	c, err := net.DialTimeout("tcp", s.tcp, 10*time.Second)
	if err != nil {
		s.t.Fatalf("dial %s: %v", s.tcp, err)
	}
	defer c.Close()
	fmt.Fprintln(c, cmd)
	reply, err := io.ReadAll(c)
	if err != nil {
		s.t.Fatalf("command %q: %v", cmd, err)
	}
	return strings.TrimSpace(string(reply))
}

// upgrade asks the serving generation to upgrade, expecting success, and
// waits until the new generation serves and the old one has exited.
func (s *server) upgrade() int {
	s.t.Helper()
	old := s.pid
	if reply := s.command("upgrade"); reply != "ok" {
		s.t.Fatalf("upgrade of pid %d: got %q, want ok", old, reply)
	}
	fields := s.waitLine("ready ")
	s.pid, _ = strconv.Atoi(fields[1])
	if s.pid == old {
		s.t.Fatalf("pid %d reported ready twice", old)
	}
	if fields[2] != s.tcp || fields[3] != s.udp {
		s.t.Fatalf("generation %d serves on %s %s, want the inherited %s %s", s.pid, fields[2], fields[3], s.tcp, s.udp)
	}
	s.waitEvent(old, "exiting")
	s.reap(old)
	if got := s.command("waitparent"); got != "<nil>" {
		s.t.Fatalf("WaitForParent in pid %d: %s", s.pid, got)
	}
	return s.pid
}

// reap waits for a generation to exit. The first is the test's child; the
// later ones become its children once their parent exits, since the test
// process is a subreaper.
func (s *server) reap(pid int) {
	s.t.Helper()
	if pid == s.first.Process.Pid {
		if err := s.first.Wait(); err != nil {
			s.t.Errorf("first generation: %v", err)
		}
		return
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		s.t.Errorf("wait for pid %d: %v", pid, err)
	} else if ws.ExitStatus() != 0 {
		s.t.Errorf("pid %d exited with %v", pid, ws)
	}
}

func (s *server) cleanup() {
	if s.pid != 0 {
		syscall.Kill(s.pid, syscall.SIGKILL)
	}
	if s.first.ProcessState == nil {
		s.first.Process.Kill()
		s.first.Wait()
	}
	// Kill every generation, seen or not (they share the first one's
	// process group), so that no test leaves a process or a zombie
	// behind.
	syscall.Kill(-s.first.Process.Pid, syscall.SIGKILL)
	s.reapGroup()
	for range s.lines {
	}
}

// reapGroup reaps every generation, seen or not, as it becomes the
// test's child (a generation's child does once its parent has exited),
// until none is left in the group, a minute at most.
func (s *server) reapGroup() {
	pgid := s.first.Process.Pid
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if pid, _ := syscall.Wait4(-pgid, nil, syscall.WNOHANG, nil); pid > 0 {
			continue
		}
		if processesInGroup(pgid, true) == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
}

// processesInGroup counts the processes of process group pgid, zombies
// too if zombies is set.
func processesInGroup(pgid int, zombies bool) int {
	names, _ := os.ReadDir("/proc")
	n := 0
	for _, d := range names {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces.
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 2 && fields[2] == strconv.Itoa(pgid) && (zombies || fields[0] != "Z" && fields[0] != "X") {
			n++
		}
	}
	return n
}

func (s *server) udpPID() string {
	s.t.Helper()
	c, err := net.Dial("udp", s.udp)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("pid"))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		s.t.Fatalf("udp: %v", err)
	}
	return string(buf[:n])
}
