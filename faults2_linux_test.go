//go:build linux

package tableflip

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The fault suite's own server, "faultserver": the helper server's line
// commands, plus what the faults below need. It is a separate helper
// rather than more modes of "server" so that the two can change apart.
//
// At start it reads its mode from the mode file, as "server" does:
//
//	serve                 serve (the default)
//	hang                  hang after New, before Listen
//	upgrade-before-ready  call Upgrade after Listen, before Ready
//	exit-after-listen     Listen (every socket), then give up before Ready
//	stop-before-ready     Listen, Stop, then call Ready
//	serve-then-hang       Listen and serve, then hang before Ready
//	lowfd-child           lower its own descriptor limit before New
//
// It upgrades on SIGHUP (each signal it sees is answered by an event line
// "hup <answer>") and stops on SIGTERM once ready. With logEventsEnv set,
// every record of the Upgrader's logger is an event line
// "log|<message>|<attrs>". Besides the commands of handleCommands it
// answers:
//
//	arm <message>         SIGKILL itself when the logger records message
//	lowfd-upgrade <n>     upgrade with only n descriptors free, then restore
//	stop-upgrade          Stop, then Upgrade; answers Upgrade's error
//	rss                   VmRSS in kB, after a GC that returns memory
//	status                generation and upgrade counters from Stats
const (
	abstractEnv  = "TABLEFLIP_TEST_ABSTRACT"
	chdirEnv     = "TABLEFLIP_TEST_CHDIR"
	logEventsEnv = "TABLEFLIP_TEST_LOG_EVENTS"
)

func init() { helpers["faultserver"] = helperFaultServer }

// dieAt is the log message at which the faultserver kills itself.
var dieAt atomic.Pointer[string]

// eventHandler turns log records into event lines, and kills the process
// at the armed message: the library logs each step of the handover, so
// this kills the old generation at an exact step.
type eventHandler struct {
	print bool
	attrs []slog.Attr
}

func (h *eventHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *eventHandler) Handle(_ context.Context, r slog.Record) error {
	if h.print {
		var b strings.Builder
		for _, a := range h.attrs {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		// One write per line: lines from all generations interleave
		// whole on the shared pipe.
		fmt.Printf("event %d log|%s|%s\n", os.Getpid(), r.Message, strings.TrimSpace(b.String()))
	}
	if m := dieAt.Load(); m != nil && *m == r.Message {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return nil
}

func (h *eventHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &eventHandler{print: h.print, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *eventHandler) WithGroup(string) slog.Handler { return h }

// answer describes Upgrade's result as handleCommands does.
func answer(err error) string {
	if err != nil {
		return "error " + err.Error() + " " + describeError(err)
	}
	return "ok"
}

func helperFaultServer() int {
	// Before New: a SIGHUP that comes while this generation starts must
	// not kill it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	mode := readMode()
	say := func(format string, args ...any) {
		fmt.Printf("event %d %s\n", os.Getpid(), fmt.Sprintf(format, args...))
	}
	if dir := os.Getenv(chdirEnv); dir != "" {
		if err := os.Chdir(dir); err != nil {
			say("chdir-error %v", err)
			return 1
		}
	}
	if mode == "lowfd-child" {
		// The runtime raised the soft limit to the hard one at start.
		var lim syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		lim.Cur = 16
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			say("setrlimit-error %v", err)
			return 1
		}
	}
	timeout, _ := time.ParseDuration(os.Getenv(timeoutEnv))
	upg, err := New(Options{
		PIDFile:        os.Getenv(pidFileEnv),
		UpgradeTimeout: timeout,
		ControlSocket:  os.Getenv(controlEnv),
		Logger:         slog.New(&eventHandler{print: os.Getenv(logEventsEnv) != ""}),
	})
	if err != nil {
		say("new-error %v", err)
		return 1
	}
	defer upg.Stop()
	hupDone := make(chan struct{})
	go func() {
		defer close(hupDone)
		for range hup {
			say("hup %s", answer(upg.Upgrade()))
		}
	}()
	// Every SIGHUP seen is answered before the process exits.
	defer func() {
		signal.Stop(hup)
		close(hup)
		<-hupDone
	}()
	if mode == "hang" {
		say("hanging")
		select {}
	}

	var lns []net.Listener
	listen := func(network, addr string) net.Listener {
		ln, err := upg.Listen(network, addr)
		if err != nil {
			say("listen-error %v", err)
			return nil
		}
		lns = append(lns, ln)
		return ln
	}
	ln := listen("tcp", "127.0.0.1:0")
	if ln == nil {
		return 1
	}
	for _, addr := range []string{os.Getenv(unixPathEnv), os.Getenv(abstractEnv)} {
		if addr != "" && listen("unix", addr) == nil {
			return 1
		}
	}
	extra, _ := strconv.Atoi(os.Getenv(extraEnv))
	for range extra {
		if listen("tcp", "127.0.0.1:0") == nil {
			return 1
		}
	}

	switch mode {
	case "upgrade-before-ready":
		say("early-upgrade %s", answer(upg.Upgrade()))
	case "stop-before-ready":
		upg.Stop()
	case "serve-then-hang":
		// As the README's program does, serve before Ready; then
		// never get ready.
		for _, l := range lns {
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go faultCommands(upg, ln, c)
				}
			}()
		}
		say("serving before ready")
		select {}
	case "exit-after-listen":
		say("giving-up")
		// Stop, and wait for it to be done, as a program that
		// shuts down cleanly does.
		upg.Stop()
		<-upg.Exit()
		return 1
	}
	if err := upg.Ready(); err != nil {
		say("ready-error %v", err)
		upg.Stop()
		<-upg.Exit()
		return 1
	}
	// SIGUSR1 prints the descriptors held when idle (no command
	// connection open); SIGTERM does too, and stops.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR1)
	go func() {
		for sig := range sigs {
			upg.WaitForParent(context.Background())
			say("fds %d upgrading=%t", countFDs(), upg.Stats().Upgrading)
			if sig == syscall.SIGTERM {
				upg.Stop()
			}
		}
	}()
	fmt.Printf("ready %d %s -\n", os.Getpid(), ln.Addr())

	// wg counts the connections being served, accepting those that
	// are accepted: every accepted connection is answered before exit.
	var wg, accepting sync.WaitGroup
	for _, l := range lns {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					if isTemporary(err) {
						// Out of descriptors (see lowfd-upgrade):
						// the connection waits in the queue.
						time.Sleep(5 * time.Millisecond)
						continue
					}
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					faultCommands(upg, ln, c)
				}()
			}
		}()
	}
	<-upg.Exit()
	for _, l := range lns {
		l.Close()
	}
	accepting.Wait()
	wg.Wait()
	say("exiting")
	return 0
}

func isTemporary(err error) bool {
	return strings.Contains(err.Error(), "too many open files")
}

// replayConn gives back a line already read.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func faultCommands(upg *Upgrader, ln net.Listener, c net.Conn) {
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return
	}
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	var reply string
	switch cmd {
	case "arm":
		dieAt.Store(&arg)
		reply = "armed"
	case "lowfd-upgrade":
		n, _ := strconv.Atoi(arg)
		reply = lowFDUpgrade(upg, n)
	case "stop-upgrade":
		upg.Stop()
		reply = answer(upg.Upgrade())
	case "rss":
		reply = strconv.Itoa(rssKB())
	case "status":
		st := upg.Stats()
		reply = fmt.Sprintf("generation=%d attempted=%d succeeded=%d failed=%d", st.Generation, st.UpgradesAttempted, st.UpgradesSucceeded, st.UpgradesFailed)
	default:
		handleCommands(upg, ln, &replayConn{Conn: c, r: io.MultiReader(strings.NewReader(line), r)})
		return
	}
	fmt.Fprintln(c, reply)
	c.Close()
}

// lowFDUpgrade upgrades with the descriptor limit lowered so that only n
// descriptors can be opened: every hole in the table is filled first, so
// that the count is exact.
func lowFDUpgrade(upg *Upgrader, n int) string {
	var fillers []int
	defer func() {
		for _, fd := range fillers {
			unix.Close(fd)
		}
	}()
	top := 0
	names, _ := os.ReadDir("/proc/self/fd")
	for _, name := range names {
		if fd, err := strconv.Atoi(name.Name()); err == nil {
			top = max(top, fd)
		}
	}
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "error filling: " + err.Error()
		}
		fillers = append(fillers, fd)
		if fd >= top {
			top = fd
			break
		}
	}
	var lim, low syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return "error " + err.Error()
	}
	low = lim
	low.Cur = uint64(top + 1 + n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		return "error " + err.Error()
	}
	err := upg.Upgrade()
	if rerr := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); rerr != nil {
		return "error restoring the limit: " + rerr.Error()
	}
	return answer(err)
}

// rssKB is VmRSS after a collection that returns what it can to the
// system, so that generations compare by what they hold.
func rssKB() int {
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	return -1
}

// startFaultServer starts the faultserver's first generation.
func startFaultServer(t *testing.T, env ...string) *server {
	t.Helper()
	// Under the race detector a process lingers a second as it exits
	// (atexit_sleep_ms), and a new generation refuses upgrades until its
	// parent is gone: without this, a storm would see one upgrade.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	return startServer(t, serverConfig{env: append([]string{helperEnv + "=faultserver", "GORACE=" + gorace}, env...)})
}

// load is a client that asks the server for its pid over loopback, one
// new connection a request, until finish, counting the answers and the
// failures.
type load struct {
	stop   chan struct{}
	done   chan struct{}
	ok     atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string
	// pids counts the answers by the pid that gave them.
	pids map[int]int
}

func startLoad(addr string) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{}), pids: map[int]int{}}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			pid, err := askPID(addr)
			l.mu.Lock()
			if err != nil {
				l.failed.Add(1)
				if len(l.errs) < 5 {
					l.errs = append(l.errs, err.Error())
				}
			} else {
				l.ok.Add(1)
				l.pids[pid]++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func askPID(addr string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	// A deadline bounds a failure; it does not synchronise anything.
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(c, "pid\n"); err != nil {
		return 0, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("answer %q", b)
	}
	return pid, nil
}

// answeredBy returns how many answers each pid gave so far.
func (l *load) answeredBy() map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.pids)
}

// finish stops the client and returns how many requests succeeded.
func (l *load) finish(t *testing.T, allowFailures bool) int64 {
	t.Helper()
	close(l.stop)
	<-l.done
	if n := l.failed.Load(); n > 0 && !allowFailures {
		t.Errorf("client: %d of %d requests failed: %q", n, n+l.ok.Load(), l.errs)
	}
	if l.ok.Load() == 0 {
		t.Errorf("client: no request answered")
	}
	return l.ok.Load()
}

// stopAll stops the serving generation for good, reaps it, and checks
// that the test process has no child left, running or zombie.
func (s *server) stopAll(t *testing.T) {
	t.Helper()
	if got := s.command("stop"); got != "stopped" {
		t.Fatalf("stop: got %q", got)
	}
	s.waitEvent(s.pid, "exiting")
	s.reap(s.pid)
	s.pid = 0
	noChildren(t)
}

func noChildren(t *testing.T) {
	t.Helper()
	if kids := children(t, os.Getpid()); kids != "" {
		t.Errorf("processes left (running or zombie): %s", kids)
	}
}

// gone reports whether pid no longer exists, not even as a zombie.
func gone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

// TestStopDuringUpgrade: Stop while the new generation initialises kills
// and reaps it, the pending Upgrade returns ErrStopped, Upgrade afterwards
// too, and Exit closes.
func TestStopDuringUpgrade(t *testing.T) {
	s := startFaultServer(t, timeoutEnv+"=1m")
	l := startLoad(s.tcp)
	s.setMode("hang")
	first := make(chan string, 1)
	go func() { first <- s.commandNoFatal("upgrade") }()
	hanging := s.waitLine("event ")
	if strings.Join(hanging[2:], " ") != "hanging" {
		t.Fatalf("got %q, want the new generation hanging", hanging)
	}
	child, _ := strconv.Atoi(hanging[1])
	// The old one served while the new one hung.
	l.finish(t, false)

	if got := s.command("stop-upgrade"); !strings.HasSuffix(got, "[ErrStopped]") {
		t.Errorf("Upgrade after Stop: %q, want ErrStopped", got)
	}
	if got := <-first; !strings.HasSuffix(got, "[ErrStopped]") {
		t.Errorf("Upgrade pending when Stop was called: %q, want ErrStopped", got)
	}
	// Exit closed: the server says so as it leaves.
	s.waitEvent(s.pid, "exiting")
	// The old generation reaped the new one before Upgrade returned.
	if !gone(child) {
		t.Errorf("new generation %d still exists after Upgrade returned ErrStopped", child)
	}
	s.reap(s.pid)
	s.pid = 0
	noChildren(t)
}

// commandNoFatal is command for other goroutines.
func (s *server) commandNoFatal(cmd string) string {
	c, err := net.DialTimeout("tcp", s.tcp, 10*time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	fmt.Fprintln(c, cmd)
	b, err := io.ReadAll(c)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

// TestUpgradeBeforeReady: in a first generation and in a new one, Upgrade
// before Ready is refused with ErrNotReady and starts nothing; the upgrade
// that started the new one still succeeds.
func TestUpgradeBeforeReady(t *testing.T) {
	dir := t.TempDir()
	mode := filepath.Join(dir, "mode")
	os.WriteFile(mode, []byte("upgrade-before-ready"), 0o644)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=faultserver", modeFileEnv+"="+mode)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	cmd.Process.Kill()
	cmd.Wait()
	if want := fmt.Sprintf("event %d early-upgrade error %s [ErrNotReady]\n", cmd.Process.Pid, ErrNotReady); line != want {
		t.Errorf("first generation: %q, want %q", line, want)
	}

	s := startFaultServer(t)
	firstFDs := s.command("fds")
	l := startLoad(s.tcp)
	s.setMode("upgrade-before-ready")
	old := s.pid
	pid := s.upgrade()
	if got, want := s.waitEvent(pid, "early-upgrade"), "early-upgrade error "+ErrNotReady.Error()+" [ErrNotReady]"; got != want {
		t.Errorf("new generation: %q, want %q", got, want)
	}
	if got := s.command("status"); got != "generation=2 attempted=0 succeeded=0 failed=0" {
		t.Errorf("new generation after its early upgrade (parent %d): %s, want nothing attempted", old, got)
	}
	l.finish(t, false)
	if got := s.command("fds"); got != firstFDs {
		t.Errorf("fds: first generation %s, second %s", firstFDs, got)
	}
	s.stopAll(t)
}

// TestOldKilledDuringHandover SIGKILLs the old generation at each step of
// the handover that the library logs, so that the step is exact rather
// than a matter of timing. TestParentKilledMidUpgrade covers the step
// between them: the new generation initialising.
func TestOldKilledDuringHandover(t *testing.T) {
	t.Run("before the new generation starts", func(t *testing.T) {
		// The upgrade has begun; no process is started yet. Killing
		// the only serving process stops the service: nothing is left
		// to check but that no process is left and the PID file is
		// the dead one's (nobody can remove it).
		s := startFaultServer(t)
		if got := s.command("arm tableflip: upgrade starting"); got != "armed" {
			t.Fatal(got)
		}
		old := s.pid
		s.commandNoFatal("upgrade")
		s.first.Wait()
		if ws := s.first.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
			t.Errorf("old generation: %v, want killed", ws)
		}
		s.pid = 0
		if kids := children(t, os.Getpid()); kids != "" {
			t.Errorf("a new generation was started: %s", kids)
		}
		if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(old) {
			t.Errorf("PID file: %s, want the dead %d's", got, old)
		}
	})

	t.Run("after the new generation starts", func(t *testing.T) {
		// The new process exists but has received nothing: New fails
		// with ErrParentExited, the new generation exits, and nothing
		// holds the sockets.
		s := startFaultServer(t)
		s.command("arm tableflip: new generation started")
		old := s.pid
		s.commandNoFatal("upgrade")
		fields := s.waitLine("event ")
		if got := strings.Join(fields[2:], " "); !strings.HasPrefix(got, "new-error") || !strings.Contains(got, "parent exited") {
			t.Errorf("new generation: %q, want New to fail with ErrParentExited", got)
		}
		child, _ := strconv.Atoi(fields[1])
		s.first.Wait()
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(child, &ws, 0, nil); err != nil || ws.ExitStatus() != 1 {
			t.Errorf("new generation %d: %v %v, want exit status 1", child, ws, err)
		}
		s.pid = 0
		noChildren(t)
		if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(old) {
			t.Errorf("PID file: %s, want the dead %d's untouched", got, old)
		}
		if c, err := net.Dial("tcp", s.tcp); err == nil {
			c.Close()
			t.Errorf("%s still accepts: a process kept the socket", s.tcp)
		}
	})

	t.Run("after the new generation is ready", func(t *testing.T) {
		// The old one has acknowledged and is killed before it drains:
		// the new one serves on, names itself in the PID file, and
		// sees its parent gone.
		s := startFaultServer(t)
		firstFDs := s.command("fds")
		s.command("arm tableflip: new generation is ready")
		l := startLoad(s.tcp)
		old := s.pid
		s.commandNoFatal("upgrade")
		fields := s.waitLine("ready ")
		s.pid, _ = strconv.Atoi(fields[1])
		s.first.Wait()
		if got := s.command("waitparent"); got != "<nil>" {
			t.Errorf("WaitForParent in the new generation: %s, want nil (it was acknowledged)", got)
		}
		// Requests the old one had accepted died with it.
		l.finish(t, true)
		if got := s.command("pid"); got != strconv.Itoa(s.pid) {
			t.Errorf("serving: pid %s, want %d", got, s.pid)
		}
		if got := readPIDFile(t, s.pidFile); got != strconv.Itoa(s.pid) {
			t.Errorf("PID file: %s, want the new %d (old was %d)", got, s.pid, old)
		}
		if got := s.command("fds"); got != firstFDs {
			t.Errorf("fds: first generation %s, second %s", firstFDs, got)
		}
		l = startLoad(s.tcp)
		s.upgrade()
		l.finish(t, false)
		s.stopAll(t)
	})
}

// TestUpgradeStorm sends 100 upgrade requests within a second, a third
// each as SIGHUP to the serving generation (the latest to say it is
// ready), as in-process Upgrade calls (the "upgrade" line command, one
// goroutine each), and on the control socket. Every caller gets an
// answer, one upgrade runs at a time across all generations, every
// success is a generation, and the service answers throughout.
//
// The kernel does not queue standard signals, so SIGHUPs that arrive
// together merge: each one a process sees is answered (a "hup" event), but
// there may be fewer answers than signals sent. SIGHUP goes to the latest
// ready generation, not the process group: a program starting up has no
// handler yet, and SIGHUP's default action kills it.
func TestUpgradeStorm(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	s := startFaultServer(t, controlEnv+"="+ctl, logEventsEnv+"=1", timeoutEnv+"=1m")
	syscall.Kill(s.pid, syscall.SIGUSR1)
	firstFDs := s.waitEvent(s.pid, "fds ")

	// One goroutine reads every line from now on; once stopping is set,
	// it sends SIGTERM (Stop) to each generation that says it is ready.
	var (
		mu       sync.Mutex
		lines    = append([]string{}, s.backlog...)
		readies  = []int{s.pid}
		stopping bool
	)
	var latest atomic.Int64
	latest.Store(int64(s.pid))
	s.backlog = nil
	readerDone := make(chan struct{})
	events := make(chan string, 1<<16)
	go func() {
		defer close(readerDone)
		for line := range s.lines {
			f := strings.Fields(line)
			pid, _ := strconv.Atoi(f[1])
			mu.Lock()
			lines = append(lines, line)
			s.seen[pid] = true
			if f[0] == "ready" {
				readies = append(readies, pid)
				latest.Store(int64(pid))
				if stopping {
					syscall.Kill(pid, syscall.SIGTERM)
				}
			}
			mu.Unlock()
			events <- line
		}
	}()

	l := startLoad(s.tcp)
	answers := make(chan string, 100)
	var wg sync.WaitGroup
	signals := 0
	// The ticker paces the requests; nothing waits on it for an outcome.
	tick := time.NewTicker(10 * time.Millisecond)
	for i := range 100 {
		<-tick.C
		switch i % 3 {
		case 0:
			syscall.Kill(int(latest.Load()), syscall.SIGHUP)
			signals++
		case 1:
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers <- "call " + s.commandNoFatal("upgrade")
			}()
		case 2:
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				resp, err := ControlCall(ctx, ctl, ControlUpgrade)
				switch {
				case err != nil:
					answers <- "control error " + err.Error()
				case resp.OK:
					answers <- "control ok"
				default:
					answers <- "control " + resp.Error.Reason + " " + resp.Error.Message
				}
			}()
		}
	}
	tick.Stop()
	wg.Wait()
	close(answers)

	okCount := 0
	allowed := []string{"[ErrUpgradeInProgress]", "[ErrParentRunning]", "[ErrUpgraded]",
		ReasonInProgress + " ", ReasonParentRunning + " ", ReasonUpgraded + " "}
	n := 0
	for a := range answers {
		n++
		if a == "call ok" || a == "control ok" {
			okCount++
			continue
		}
		if !containsAny(a, allowed) {
			t.Errorf("answer %q, want success or a refusal", a)
		}
	}
	if n != 66 {
		t.Errorf("%d answers to 66 calls and control requests", n)
	}
	l.finish(t, false)

	// The descriptors of the last generation when idle: a SIGHUP may
	// still run an upgrade, so ask until the answer comes from a
	// generation that is not upgrading, waiting for the end of the
	// upgrade in between.
	next := func() string {
		select {
		case line := <-events:
			return line
		case <-time.After(time.Minute):
			t.Fatal("no line from the server within a minute")
			return ""
		}
	}
	var lastFDs string
	exited := map[int]bool{}
	for lastFDs == "" {
		pid := int(latest.Load())
		if exited[pid] {
			// Its successor's ready line is still to come (the
			// reader updates latest before it passes a line on).
			for !strings.HasPrefix(next(), "ready ") {
			}
			continue
		}
		syscall.Kill(pid, syscall.SIGUSR1)
		prefix := fmt.Sprintf("event %d ", pid)
		until := func(done func(string) bool) {
			for {
				if rest, ok := strings.CutPrefix(next(), prefix); ok {
					if rest == "exiting" {
						exited[pid] = true
						return
					}
					if done(rest) {
						return
					}
				}
			}
		}
		var report string
		until(func(rest string) bool {
			report = rest
			return strings.HasPrefix(rest, "fds ")
		})
		switch {
		case exited[pid]:
		case strings.HasSuffix(report, "upgrading=false"):
			lastFDs = report
		default:
			// Until the upgrade ends; then ask the latest again.
			until(func(rest string) bool { return strings.HasPrefix(rest, "log|tableflip: upgrade failed|") })
		}
	}
	if lastFDs != firstFDs {
		t.Errorf("idle fds: first generation %s, last %s", firstFDs, lastFDs)
	}

	// Stop every generation that is or becomes ready (a SIGHUP may have
	// started one more upgrade), until all have exited and the shared
	// output ends.
	mu.Lock()
	stopping = true
	for _, pid := range readies {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	mu.Unlock()
	<-readerDone
	for pid := range s.seen {
		if pid == s.first.Process.Pid {
			s.first.Wait()
			continue
		}
		syscall.Wait4(pid, nil, 0, nil)
	}
	s.pid = 0
	noChildren(t)

	// One upgrade at a time, across the generations: the log lines
	// that begin and end an upgrade never overlap. (A generation starts
	// its first upgrade only after its parent exited, and the parent
	// writes its last line before it exits: the pipe orders them.)
	// A generation stopped during an upgrade logs no end: its exit ends
	// it.
	active := map[string]bool{}
	succeeded, hups := 0, 0
	for _, line := range lines {
		_, rest, _ := strings.Cut(line, " ")
		pid, rest, _ := strings.Cut(rest, " ")
		switch {
		case strings.HasPrefix(rest, "log|tableflip: upgrade starting|"):
			active[pid] = true
			if len(active) > 1 {
				t.Errorf("two upgrades at once: %s while %v", line, active)
			}
		case strings.HasPrefix(rest, "log|tableflip: upgrade succeeded|"):
			succeeded++
			delete(active, pid)
		case rest == "exiting":
			delete(active, pid)
		case strings.HasPrefix(rest, "log|tableflip: upgrade failed|"):
			delete(active, pid)
			if !strings.Contains(rest, ErrStopped.Error()) {
				t.Errorf("upgrade failed: %s", line)
			}
		case strings.HasPrefix(rest, "hup "):
			hups++
			a := strings.TrimPrefix(rest, "hup ")
			if a == "ok" {
				okCount++
			} else if !containsAny(a, append(allowed, "[ErrStopped]")) {
				t.Errorf("SIGHUP answered %q", a)
			}
		}
	}
	if len(active) != 0 {
		t.Errorf("upgrades never ended in %v", active)
	}
	if hups == 0 {
		t.Errorf("no SIGHUP answered of %d sent", signals)
	}
	if succeeded != len(readies)-1 || okCount != succeeded || succeeded == 0 {
		t.Errorf("%d generations, %d upgrades logged as succeeded, %d callers told of success", len(readies), succeeded, okCount)
	}
	t.Logf("%d requests (%d signals, %d answered): %d upgrades, %d generations, %d load requests",
		100, signals, hups, succeeded, len(readies), l.ok.Load())
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
