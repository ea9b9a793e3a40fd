//go:build linux

package main

// The harness of the hostile tests: it runs the README's program (this
// package's main, compiled into the test binary) as a real process group,
// reaps every generation, loads it with clients that never retry, and
// builds variants of main.go for the few findings that the program as it
// stands cannot express.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
	"golang.org/x/sys/unix"
)

// subjectEnv names what the test binary runs as when it is re-executed.
// The library starts every new generation with os.Args and the
// environment of the one before, so the variable reaches them all.
const subjectEnv = "TABLEFLIP_HOSTILE_SUBJECT"

var (
	seedFlag  = flag.Uint64("hostile.seed", 0, "seed for the hostile tests' random moments (0: from the clock)")
	scaleFlag = flag.Float64("hostile.scale", 1, "multiply the hostile tests' iteration counts by this (4 gives the issue's 300 stops during a reload)")
)

func TestMain(m *testing.M) {
	switch name := os.Getenv(subjectEnv); name {
	case "":
	case "readme":
		main()
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: no such subject\n", subjectEnv, name)
		os.Exit(2)
	}
	// Generations whose parent exited come to this process, so that it
	// can reap them and see that none is left.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// iterations scales a test's default count by -hostile.scale.
func iterations(n int) int {
	return max(1, int(float64(n)**scaleFlag+0.5))
}

// newRand returns the test's random source, and logs the seed when the
// test fails so that the run can be repeated.
func newRand(t *testing.T) *rand.Rand {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	h := fnv.New64a()
	io.WriteString(h, t.Name())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d: repeat with -hostile.seed=%d -run '^%s$'", seed, seed, t.Name())
		}
	})
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// --- Processes ---

// proc is one line of /proc/PID/stat.
type proc struct {
	pid, ppid, pgid int
	state           string
}

func (p proc) String() string {
	return fmt.Sprintf("pid %d (ppid %d, state %s)", p.pid, p.ppid, p.state)
}

func readProc(pid int) (proc, bool) {
	st, ok := proctree.ReadStat(pid)
	return proc{pid: st.PID, ppid: st.PPID, pgid: st.PGID, state: st.State}, ok
}

// groupProcs lists the processes of process group pgid, zombies included.
func groupProcs(pgid int) []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		panic(err)
	}
	var list []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok && p.pgid == pgid {
			list = append(list, p)
		}
	}
	return list
}

// socketInodes returns the socket inodes that pid holds, by fd.
func socketInodes(pid int) map[int]string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	m := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(link, "socket:") {
			m[fd] = link
		}
	}
	return m
}

// acceptedOwn reports whether kid, started by old, holds a socket that
// old does not: one it accepted (or made) itself, rather than one passed
// on. Its handover socket (fd 3) does not count. Before exec the child
// holds old's descriptors; old's ForkExec returns only once the child has
// exec'd, and only then closes its copy of the child's end.
func acceptedOwn(kid, old int) bool {
	mine := socketInodes(kid)
	delete(mine, 3)
	if len(mine) == 0 {
		return false
	}
	theirs := map[string]bool{}
	for _, ino := range socketInodes(old) {
		theirs[ino] = true
	}
	for _, ino := range mine {
		if !theirs[ino] {
			return true
		}
	}
	return false
}

// alive reports whether pid is a process that has not exited (a zombie
// has exited).
func alive(pid int) bool {
	p, ok := readProc(pid)
	return ok && p.state != "Z" && p.state != "X"
}

// pidfd is a handle on one process that outlives its pid.
type pidfd int

func openPidfd(pid int) (pidfd, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	return pidfd(fd), err
}

// wait reports whether the process exited within d. The pidfd turns
// readable the moment the process exits, before anyone reaps it.
func (fd pidfd) wait(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		ms := max(0, int(time.Until(deadline).Milliseconds()))
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			panic(err)
		}
		return n > 0
	}
}

func (fd pidfd) exited() bool { return fd.wait(0) }

func (fd pidfd) close() { unix.Close(int(fd)) }

// reaper reaps the processes of the groups it is given, as they exit, and
// keeps their wait status. It reaps by group only (wait4 on -pgid), so
// that commands the test runs itself, such as go build, keep theirs.
type reaper struct {
	mu       sync.Mutex
	pgids    []int
	statuses map[int]reaped
	changed  chan struct{} // closed and replaced at every reap
	stop     chan struct{}
	done     chan struct{}
}

func newReaper(t *testing.T) *reaper {
	r := &reaper{
		statuses: map[int]reaped{},
		changed:  make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	sigchld := make(chan os.Signal, 64)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go func() {
		defer close(r.done)
		defer signal.Stop(sigchld)
		// SIGCHLD coalesces; the ticker is there for what it misses.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			r.reap()
			select {
			case <-sigchld:
			case <-tick.C:
			case <-r.stop:
				r.reap()
				return
			}
		}
	}()
	t.Cleanup(func() { close(r.stop); <-r.done })
	return r
}

func (r *reaper) add(pgid int) {
	r.mu.Lock()
	r.pgids = append(r.pgids, pgid)
	r.mu.Unlock()
}

// remove stops reaping group pgid, which has no process left.
func (r *reaper) remove(pgid int) {
	r.reap()
	r.mu.Lock()
	r.pgids = slices.DeleteFunc(r.pgids, func(g int) bool { return g == pgid })
	r.mu.Unlock()
}

func (r *reaper) reap() {
	r.mu.Lock()
	pgids := slices.Clone(r.pgids)
	r.mu.Unlock()
	for _, pgid := range pgids {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-pgid, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			r.mu.Lock()
			r.statuses[pid] = reaped{pgid, ws}
			close(r.changed)
			r.changed = make(chan struct{})
			r.mu.Unlock()
		}
	}
}

type reaped struct {
	pgid int
	ws   unix.WaitStatus
}

// status returns the wait status of pid if it has been reaped here.
func (r *reaper) status(pid int) (unix.WaitStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.statuses[pid]
	return st.ws, ok
}

// group returns the wait statuses of the processes of group pgid reaped
// here, by pid.
func (r *reaper) group(pgid int) map[int]unix.WaitStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[int]unix.WaitStatus{}
	for pid, st := range r.statuses {
		if st.pgid == pgid {
			m[pid] = st.ws
		}
	}
	return m
}

// waitReaped waits up to d for pid to be reaped here. A process whose
// parent is alive is reaped by its parent, never here.
func (r *reaper) waitReaped(pid int, d time.Duration) (unix.WaitStatus, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		r.mu.Lock()
		st, ok := r.statuses[pid]
		changed := r.changed
		r.mu.Unlock()
		if ok {
			return st.ws, true
		}
		select {
		case <-changed:
		case <-t.C:
			return 0, false
		}
	}
}

func describeStatus(ws unix.WaitStatus) string {
	switch {
	case ws.Signaled():
		return "killed by " + unix.SignalName(ws.Signal())
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// --- The server ---

// server is one start of a subject: a process group, whose first process
// is the first generation and whose later generations come from upgrades.
type server struct {
	t      *testing.T
	r      *reaper
	bin    string
	env    []string
	addr   string
	dir    string // holds the PID file and the control socket, nothing else
	pid    string // PID file
	ctl    string // control socket
	log    string // every generation's stdout and stderr
	first  int    // pid of the first generation, and the group's id
	closed bool
}

// config is what a test chooses about a server; zero means the README
// program with a fresh address and fresh paths.
type config struct {
	bin  string // executable; "" is this test binary running main
	addr string
	dir  string
}

// startServer starts the subject and waits until it serves and its PID
// file names it.
func startServer(t *testing.T, r *reaper, c config) *server {
	t.Helper()
	s := launch(t, r, c)
	if err := s.waitServing(30 * time.Second); err != nil {
		t.Fatalf("fresh start: %v\n%s", err, s.logTail())
	}
	return s
}

// launch starts the subject without waiting for it.
func launch(t *testing.T, r *reaper, c config) *server {
	t.Helper()
	s := &server{t: t, r: r, bin: c.bin, addr: c.addr, dir: c.dir}
	// The race detector sleeps a second before a process exits
	// (atexit_sleep_ms), which would hide every race with an exiting
	// generation: a program built without -race exits at once.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GORACE=") {
			s.env = append(s.env, kv)
		}
	}
	s.env = append(s.env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	if s.bin == "" {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		s.bin = exe
		s.env = append(s.env, subjectEnv+"=readme")
	}
	if s.addr == "" {
		s.addr = freePort(t)
	}
	if s.dir == "" {
		s.dir = shortTempDir(t)
	}
	s.pid = filepath.Join(s.dir, "server.pid")
	s.ctl = filepath.Join(s.dir, "control.sock")
	logf, err := os.CreateTemp(t.TempDir(), "server-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.log = logf.Name()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	argv := []string{s.bin, "-addr", s.addr, "-pid-file", s.pid, "-control", s.ctl}
	pid, err := syscall.ForkExec(s.bin, argv, &syscall.ProcAttr{
		Env:   s.env,
		Files: []uintptr{null.Fd(), logf.Fd(), logf.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.first = pid
	r.add(pid)
	t.Cleanup(s.kill)
	return s
}

// kill ends whatever is left of the group, for a test that failed or
// returned early. A test that ends normally calls stopAll, which checks.
func (s *server) kill() {
	if s.closed {
		return
	}
	s.closed = true
	unix.Kill(-s.first, unix.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for len(groupProcs(s.first)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if left := groupProcs(s.first); len(left) > 0 {
		s.t.Errorf("after SIGKILL to process group %d, still there after 10s: %v", s.first, left)
		return
	}
	s.r.remove(s.first)
}

// stopAll sends SIGTERM to every process of the group, as systemd's stop
// does, and checks that all of them exit within d and that none is left
// unreaped: no process of the group, no zombie.
func (s *server) stopAll(d time.Duration) {
	s.t.Helper()
	unix.Kill(-s.first, unix.SIGTERM)
	if left := s.waitGroupGone(d); len(left) > 0 {
		s.t.Errorf("%s after SIGTERM to every process of the server, still there: %v\n%s", d, left, s.logTail())
	}
	s.kill()
	s.checkLog()
}

// waitGroupGone waits up to d until no process of the group is left,
// zombies included (the reaper reaps those that come to this process),
// and returns what is left.
func (s *server) waitGroupGone(d time.Duration) []proc {
	deadline := time.Now().Add(d)
	for {
		left := groupProcs(s.first)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkLog fails the test if a generation reported a data race.
func (s *server) checkLog() {
	b, _ := os.ReadFile(s.log)
	if bytes.Contains(b, []byte("WARNING: DATA RACE")) {
		s.t.Errorf("a generation reported a data race:\n%s", b)
	}
}

// logSince returns what the generations logged after offset, and the
// offset of its end.
func (s *server) logSince(offset int64) (string, int64) {
	f, err := os.Open(s.log)
	if err != nil {
		return "", offset
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, offset, 1<<30))
	return string(b), offset + int64(len(b))
}

// logTail is the end of the generations' log, for failure messages.
func (s *server) logTail() string {
	b, _ := os.ReadFile(s.log)
	const max = 4000
	if len(b) > max {
		b = append([]byte("…"), b[len(b)-max:]...)
	}
	if len(b) == 0 {
		return "(the generations logged nothing)"
	}
	return "the generations' log:\n" + string(b)
}

// pidFromFile returns the pid the PID file names, or 0.
func (s *server) pidFromFile() int {
	b, err := os.ReadFile(s.pid)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitServing waits until the PID file names a live process and that
// process answers a request.
func (s *server) waitServing(d time.Duration) error {
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		if len(groupProcs(s.first)) == 0 {
			return errors.New("every process of the server has exited")
		}
		pid := s.pidFromFile()
		switch {
		case pid == 0:
			last = "no PID file"
		case !alive(pid):
			last = fmt.Sprintf("PID file names %d, which is not alive", pid)
		default:
			got, err := getPID(s.addr)
			switch {
			case err != nil:
				last = err.Error()
			case got != pid:
				last = fmt.Sprintf("PID file names %d, answered by %d", pid, got)
			default:
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("not serving after %s: %s", d, last)
}

// children returns the processes of the group whose parent is pid.
func (s *server) children(pid int) []proc {
	var list []proc
	for _, p := range groupProcs(s.first) {
		if p.ppid == pid {
			list = append(list, p)
		}
	}
	return list
}

// control sends one request to the control socket, waiting at most d.
func (s *server) control(d time.Duration, cmd string) (*tableflip.ControlResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return tableflip.ControlCall(ctx, s.ctl, cmd)
}

// waitSettled waits until the generation the PID file names serves and
// its parent has exited (it is this process's child now, as a subreaper),
// so that it may upgrade, and returns its pid. (Not by the control
// socket's status: that reads the whole /proc/net/tcp of the network
// namespace, which takes a second when others' connections sit there in
// TIME_WAIT.)
func (s *server) waitSettled(d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		pid := s.pidFromFile()
		p, _ := readProc(pid)
		if pid == 0 || p.ppid != os.Getpid() {
			last = fmt.Sprintf("the PID file names %d, whose parent is %d", pid, p.ppid)
			time.Sleep(time.Millisecond)
			continue
		}
		if err := s.waitServing(time.Until(deadline)); err != nil {
			return 0, err
		}
		if s.pidFromFile() == pid {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("not settled after %s: %s", d, last)
}

// freePort returns a loopback address that was free a moment ago: the
// README program listens on the address it is given.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// shortTempDir is a temporary directory whose paths fit in a Unix socket
// address (108 bytes), which t.TempDir's may not.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "hostile")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// --- Clients ---

// getPID sends one request on a new connection and returns the pid that
// served it.
func getPID(addr string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.(*net.TCPConn).SetLinger(0) // see load.client
	c.SetDeadline(time.Now().Add(5 * time.Second))
	pid, _, err := roundTrip(c, bufio.NewReader(c), false)
	return pid, err
}

// roundTrip sends one GET on c and reads its answer, "pid N". It never
// retries: a request that gets no answer is a lost request, whatever a
// cleverer client would have done about it.
func roundTrip(c net.Conn, br *bufio.Reader, keepAlive bool) (pid int, closing bool, err error) {
	req := "GET / HTTP/1.1\r\nHost: hostile\r\n"
	if !keepAlive {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return 0, true, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, true, fmt.Errorf("read: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, true, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, true, fmt.Errorf("status %s", resp.Status)
	}
	n, ok := strings.CutPrefix(strings.TrimSpace(string(body)), "pid ")
	pid, perr := strconv.Atoi(n)
	if !ok || perr != nil {
		return 0, true, fmt.Errorf("body %q", body)
	}
	return pid, resp.Close, nil
}

// load is a set of clients that send requests until stopped, half of them
// on a new connection per request, half on keep-alive connections.
type load struct {
	addr    string
	ok      atomic.Int64
	failed  atomic.Int64
	refused atomic.Int64 // of failed: connect() refused
	perOK   []atomic.Int64

	mu       sync.Mutex
	failures []failure
	by       map[int]int // requests answered, by pid

	stop chan struct{}
	wg   sync.WaitGroup
}

type failure struct {
	at   time.Time
	mode string
	err  error
}

func (f failure) String() string {
	return fmt.Sprintf("%s %s: %v", f.at.Format("15:04:05.000000"), f.mode, f.err)
}

func startLoad(t *testing.T, addr string, clients int) *load {
	l := &load{addr: addr, stop: make(chan struct{}), perOK: make([]atomic.Int64, clients), by: map[int]int{}}
	for i := range clients {
		l.wg.Add(1)
		go l.client(i, i%2 == 1)
	}
	t.Cleanup(l.close)
	return l
}

func (l *load) close() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *load) fail(mode string, err error) {
	l.failed.Add(1)
	if errors.Is(err, unix.ECONNREFUSED) {
		l.refused.Add(1)
	}
	l.mu.Lock()
	l.failures = append(l.failures, failure{time.Now(), mode, err})
	l.mu.Unlock()
}

func (l *load) answered(pid int) {
	l.mu.Lock()
	l.by[pid]++
	l.mu.Unlock()
}

// answeredBy returns how many requests pid answered.
func (l *load) answeredBy(pid int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.by[pid]
}

// failuresSince returns the failures recorded after t.
func (l *load) failuresSince(t time.Time) []failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	var list []failure
	for _, f := range l.failures {
		if f.at.After(t) {
			list = append(list, f)
		}
	}
	return list
}

func (l *load) client(i int, keepAlive bool) {
	defer l.wg.Done()
	mode := "new connection per request"
	if keepAlive {
		mode = "keep-alive"
	}
	var (
		c  net.Conn
		br *bufio.Reader
	)
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		if c == nil {
			var err error
			c, err = net.DialTimeout("tcp", l.addr, 2*time.Second)
			if err != nil {
				l.fail(mode, fmt.Errorf("dial: %w", err))
				c = nil
				// A refused connect returns at once; do not spin.
				time.Sleep(time.Millisecond)
				continue
			}
			// Closed with a reset once done: a closed loopback
			// connection would otherwise sit in TIME_WAIT for a minute,
			// tens of thousands of them, until the ports run out.
			c.(*net.TCPConn).SetLinger(0)
			br = bufio.NewReader(c)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		pid, closing, err := roundTrip(c, br, keepAlive)
		if err != nil {
			l.fail(mode, err)
		} else {
			l.ok.Add(1)
			l.perOK[i].Add(1)
			l.answered(pid)
		}
		if err != nil || closing || !keepAlive {
			c.Close()
			c = nil
		}
	}
}

// settle waits until every client has had a request answered since it
// was called, so that a failure caused before it is counted before it
// returns.
func (l *load) settle(d time.Duration) error {
	before := make([]int64, len(l.perOK))
	for i := range l.perOK {
		before[i] = l.perOK[i].Load()
	}
	deadline := time.Now().Add(d)
	for i := range l.perOK {
		for l.perOK[i].Load() == before[i] {
			if time.Now().After(deadline) {
				return fmt.Errorf("client %d had no request answered in %s", i, d)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// --- Variants of the README program ---

// edit inserts text before or after the one place where anchor occurs in
// main.go; with file set, it adds that file, with text as its contents,
// to the package instead.
type edit struct {
	anchor        string
	before, after string
	file, text    string
}

// buildVariant builds main.go with edits applied, for a finding that the
// README program as it stands cannot express (it never calls Stop, and has
// no WriteState). Everything else is the README program at this commit,
// so the variant follows it as it changes; an anchor that is gone fails
// the test, to be updated by hand.
func buildVariant(t *testing.T, edits ...edit) string {
	t.Helper()
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	dir := t.TempDir()
	replace := map[string]string{}
	for _, e := range edits {
		if e.file != "" {
			path := filepath.Join(dir, e.file)
			if err := os.WriteFile(path, []byte(e.text), 0o644); err != nil {
				t.Fatal(err)
			}
			abs, err := filepath.Abs(e.file)
			if err != nil {
				t.Fatal(err)
			}
			replace[abs] = path
			continue
		}
		if n := strings.Count(text, e.anchor); n != 1 {
			t.Fatalf("main.go has %q %d times, not once: the README program changed; update this test's variant", e.anchor, n)
		}
		text = strings.Replace(text, e.anchor, e.before+e.anchor+e.after, 1)
	}
	variant := filepath.Join(dir, "main.go")
	if err := os.WriteFile(variant, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := filepath.Abs("main.go")
	if err != nil {
		t.Fatal(err)
	}
	replace[self] = variant
	overlay, _ := json.Marshal(map[string]any{"Replace": replace})
	overlayPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "server")
	args := []string{"build", "-overlay", overlayPath, "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s\nthe variant:\n%s", strings.Join(args, " "), err, out, text)
	}
	return bin
}
