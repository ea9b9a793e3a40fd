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
	"os/signal"
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

func init() { registerHelper("faultserver", helperFaultServer) }

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
			if sig == syscall.SIGUSR1 {
				// Idle: the server side of the connections that
				// clients have just closed is closed too. Waited
				// for a while at most, so that a leaked one shows.
				for deadline := time.Now().Add(5 * time.Second); openConns() > 0 && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
			}
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
	return startServer(t, serverConfig{env: append([]string{helper("faultserver"), "GORACE=" + gorace}, env...)})
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

// openConns counts this process's stream sockets that do not listen:
// the server side of connections.
func openConns() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || typ != unix.SOCK_STREAM {
			continue
		}
		if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && acc == 0 {
			n++
		}
	}
	return n
}

func startLoad(addr string) *load { return startLoadN(addr, 1) }

// startLoadN is startLoad with n clients at once.
func startLoadN(addr string, n int) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{}), pids: map[int]int{}}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
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
	}
	go func() {
		wg.Wait()
		close(l.done)
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
