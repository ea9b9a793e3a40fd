//go:build unix

package systemd

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// The test binary re-runs itself as a socket-activated service: TestMain
// dispatches on helperEnv before any test runs.
const helperEnv = "TABLEFLIP_SYSTEMD_TEST_HELPER"

func TestMain(m *testing.M) {
	switch h := os.Getenv(helperEnv); h {
	case "":
		os.Exit(m.Run())
	case "serve":
		os.Unsetenv(helperEnv)
		serveActivated()
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", h)
		os.Exit(2)
	}
}

// report is what the helper says, as one JSON line on stdout, about the
// fds it was given.
type report struct {
	PID    int
	Err    string
	Env    []string // LISTEN_* variables still set after ListenFds
	Fds    []reportFd
	Served []string
}

type reportFd struct {
	Fd        int
	Name      string
	Network   string
	Addr      string
	Listening bool
	Cloexec   bool
	Err       string
}

// serveActivated takes the fds systemd passed, reports them, then answers
// one connection (or datagram) on each usable socket with "hello NAME".
func serveActivated() {
	fds, err := ListenFds()
	r := report{PID: os.Getpid()}
	if err != nil {
		r.Err = err.Error()
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") {
			r.Env = append(r.Env, kv)
		}
	}
	for _, l := range fds {
		rf := reportFd{Fd: l.Fd, Name: l.Name, Network: l.Network, Listening: l.Listening}
		if l.Addr != nil {
			rf.Addr = l.Addr.String()
		}
		if l.Err != nil {
			rf.Err = l.Err.Error()
		} else if flags, err := unix.FcntlInt(uintptr(l.Fd), unix.F_GETFD, 0); err == nil {
			rf.Cloexec = flags&unix.FD_CLOEXEC != 0
		}
		r.Fds = append(r.Fds, rf)
	}
	out, _ := json.Marshal(r)
	fmt.Printf("%s\n", out)

	var wg sync.WaitGroup
	for _, l := range fds {
		if l.File == nil || l.Network == "" {
			continue
		}
		greeting := []byte("hello " + l.Name + "\n")
		if l.Listening {
			ln, err := net.FileListener(l.File)
			l.File.Close()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := ln.Accept()
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				c.Write(greeting)
				c.Close()
				ln.Close()
			}()
		} else if l.Type == sockDgram {
			pc, err := net.FilePacketConn(l.File)
			l.File.Close()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 512)
				_, from, err := pc.ReadFrom(buf)
				if err == nil {
					_, err = pc.WriteTo(greeting, from)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				pc.Close()
			}()
		}
	}
	wg.Wait()
}

// helper is a running helper process.
type helper struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func startHelper(t *testing.T, cmd *exec.Cmd, stderr io.Writer) *helper {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdout: bufio.NewReader(out), stderr: &lockedBuffer{}}
	if stderr == nil {
		stderr = h.stderr
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A test that failed early must not leave the helper waiting
		// for a client.
		cmd.Process.Kill()
		cmd.Wait()
	})
	return h
}

func (h *helper) report(t *testing.T) report {
	t.Helper()
	line, err := h.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the helper's report: %v; stderr:\n%s", err, h.stderr)
	}
	var r report
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("report %q: %v", line, err)
	}
	if len(r.Env) != 0 {
		t.Errorf("helper still has %q after ListenFds", r.Env)
	}
	return r
}

func (h *helper) wait(t *testing.T) {
	t.Helper()
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("helper: %v; stderr:\n%s", err, h.stderr)
	}
}

// readGreeting reads what the helper answers on c.
func readGreeting(t *testing.T, c net.Conn) string {
	t.Helper()
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// socketActivate finds systemd-socket-activate(1). CI installs it (.ci/run)
// and must fail rather than skip without it.
func socketActivate(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("systemd-socket-activate"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/systemd-socket-activate", "/lib/systemd/systemd-socket-activate",
		"/usr/lib/systemd/systemd-socket-activate"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("systemd-socket-activate not found (Debian package systemd); CI must have it")
	}
	t.Skip("systemd-socket-activate not found (Debian package systemd)")
	return ""
}

// freePort returns a TCP or UDP port on 127.0.0.1 that was free a moment
// ago: systemd-socket-activate cannot listen on port 0.
func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitListening reads the tool's stderr until it has said "Listening on"
// n times, that is until its sockets are bound, and passes the rest on.
func waitListening(t *testing.T, r io.Reader, n int, rest io.Writer) {
	t.Helper()
	br := bufio.NewReader(r)
	var seen strings.Builder
	for n > 0 {
		line, err := br.ReadString('\n')
		seen.WriteString(line)
		if err != nil {
			t.Fatalf("systemd-socket-activate: %v; it said:\n%s", err, seen.String())
		}
		if strings.HasPrefix(line, "Listening on ") {
			n--
		}
	}
	go io.Copy(rest, br)
}

// TestSocketActivateStream runs the helper under the real
// systemd-socket-activate with a Unix and a TCP socket, named with
// --fdname: the first connection makes the tool exec the helper, which
// must find both sockets with their names, types and addresses, and serve
// on them.
func TestSocketActivateStream(t *testing.T) {
	tool := socketActivate(t)
	sock := filepath.Join(shortTempDir(t), "api.sock")
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	cmd := exec.Command(tool, "-l", sock, "-l", tcpAddr, "--fdname=api:web",
		"-E", helperEnv+"=serve", os.Args[0])
	pr, pw := io.Pipe()
	h := startHelper(t, cmd, pw)
	defer pw.Close()
	waitListening(t, pr, 2, h.stderr)

	c1, err := net.Dial("unix", sock) // systemd-socket-activate starts the helper now
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	r := h.report(t)
	if r.Err != "" || len(r.Fds) != 2 {
		t.Fatalf("report %+v", r)
	}
	want := []reportFd{
		{Fd: 3, Name: "api", Network: "unix", Addr: sock, Listening: true, Cloexec: true},
		{Fd: 4, Name: "web", Network: "tcp4", Addr: tcpAddr, Listening: true, Cloexec: true},
	}
	for i := range want {
		if r.Fds[i] != want[i] {
			t.Errorf("fd %d: got %+v, want %+v", i+3, r.Fds[i], want[i])
		}
	}
	if got := readGreeting(t, c1); got != "hello api\n" {
		t.Errorf("unix socket answered %q", got)
	}
	c2, err := net.Dial("tcp4", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := readGreeting(t, c2); got != "hello web\n" {
		t.Errorf("TCP socket answered %q", got)
	}
	h.wait(t)
}

// TestSocketActivateDatagram: the same with --datagram, a UDP socket
// under the default name.
func TestSocketActivateDatagram(t *testing.T) {
	tool := socketActivate(t)
	udpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp"))
	cmd := exec.Command(tool, "--datagram", "-l", udpAddr, "-E", helperEnv+"=serve", os.Args[0])
	pr, pw := io.Pipe()
	h := startHelper(t, cmd, pw)
	defer pw.Close()
	waitListening(t, pr, 1, h.stderr)

	c, err := net.Dial("udp4", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	r := h.report(t)
	want := reportFd{Fd: 3, Name: UnknownFdName, Network: "udp4", Addr: udpAddr, Cloexec: true}
	if r.Err != "" || len(r.Fds) != 1 || r.Fds[0] != want {
		t.Fatalf("report %+v, want one fd %+v", r, want)
	}
	if got := readGreeting(t, c); got != "hello unknown\n" {
		t.Errorf("UDP socket answered %q", got)
	}
	h.wait(t)
}

// withOwnListenPID runs the helper through /bin/sh, which sets LISTEN_PID
// to its own pid and then execs the helper in the same process: the
// helper sees fds meant for it, as from systemd.
func withOwnListenPID(fds []*os.File, names string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0"`, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=serve",
		fmt.Sprintf("%s=%d", EnvListenFds, len(fds)), EnvListenFdNames+"="+names)
	cmd.ExtraFiles = fds
	return cmd
}

// TestFdStoreHandBack stores a listening TCP socket and a unixgram socket
// in a fake systemd's fd store with StoreFiles, closes them here, and
// starts a new process with the stored fds as systemd hands them back
// (LISTEN_FDS with names): a client that connected before the new
// process existed is served, nothing is refused in between.
func TestFdStoreHandBack(t *testing.T) {
	s := listenNotify(t, "")
	n := newTestNotifier(t, s)
	dir := shortTempDir(t)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpAddr := ln.Addr().String()
	gramPath := filepath.Join(dir, "dns")
	gram, err := net.ListenPacket("unixgram", gramPath)
	if err != nil {
		t.Fatal(err)
	}
	lnFile := fileOf(t, ln.(*net.TCPListener))
	gramFile := fileOf(t, gram.(*net.UnixConn))
	if err := n.StoreFiles("web", lnFile); err != nil {
		t.Fatal(err)
	}
	if err := n.StoreFiles("dns", gramFile); err != nil {
		t.Fatal(err)
	}
	var stored []*os.File
	var names []string
	for range 2 {
		msg, files := s.recv()
		name, ok := strings.CutPrefix(msg, "FDSTORE=1\nFDNAME=")
		if !ok || len(files) != 1 {
			t.Fatalf("got %q with %d fds", msg, len(files))
		}
		stored = append(stored, files[0])
		names = append(names, name)
	}
	// Only systemd's copies are left.
	ln.Close()
	gram.Close()
	lnFile.Close()
	gramFile.Close()

	c1, err := net.Dial("tcp4", tcpAddr)
	if err != nil {
		t.Fatalf("dial while only the store holds the socket: %v", err)
	}
	defer c1.Close()

	h := startHelper(t, withOwnListenPID(stored, strings.Join(names, ":")), nil)
	for _, f := range stored {
		f.Close() // the helper has its own
	}
	r := h.report(t)
	want := []reportFd{
		{Fd: 3, Name: "web", Network: "tcp4", Addr: tcpAddr, Listening: true, Cloexec: true},
		{Fd: 4, Name: "dns", Network: "unixgram", Addr: gramPath, Cloexec: true},
	}
	if r.Err != "" || len(r.Fds) != 2 || r.Fds[0] != want[0] || r.Fds[1] != want[1] {
		t.Fatalf("report %+v, want %+v", r, want)
	}
	if got := readGreeting(t, c1); got != "hello web\n" {
		t.Errorf("TCP answered %q", got)
	}
	client, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "client"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.WriteTo([]byte("q"), &net.UnixAddr{Name: gramPath, Net: "unixgram"}); err != nil {
		t.Fatal(err)
	}
	if got := readGreeting(t, client); got != "hello dns\n" {
		t.Errorf("unixgram answered %q", got)
	}
	h.wait(t)
}

// TestListenFdsClosedFd passes LISTEN_FDS=2 with fd 4 closed: the helper
// reports fd 4 as unusable, by number and name, and serves on fd 3.
func TestListenFdsClosedFd(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := startHelper(t, withOwnListenPID([]*os.File{fileOf(t, ln.(*net.TCPListener)), nil}, "web:gone"), nil)
	r := h.report(t)
	if len(r.Fds) != 2 {
		t.Fatalf("report %+v", r)
	}
	wantErr := `systemd: passed fd 4 ("gone"): bad file descriptor`
	if r.Err != wantErr || r.Fds[1].Err != wantErr || r.Fds[0].Err != "" || r.Fds[0].Name != "web" {
		t.Fatalf("report %+v, want fd 4 reported with %q", r, wantErr)
	}
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readGreeting(t, c); got != "hello web\n" {
		t.Errorf("answered %q", got)
	}
	h.wait(t)
}

// TestListenFdsGarbageInChild: malformed variables in a real process give
// a clear error and no fds, and are removed all the same.
func TestListenFdsGarbageInChild(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := startHelper(t, withOwnListenPID([]*os.File{fileOf(t, ln.(*net.TCPListener))}, "web:extra"), nil)
	r := h.report(t)
	if len(r.Fds) != 0 || !strings.Contains(r.Err, `LISTEN_FDNAMES="web:extra": 2 names for 1 fds`) {
		t.Fatalf("report %+v", r)
	}
	h.wait(t)
}
