//go:build linux

package tableflip

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	maxGenEnv = "TABLEFLIP_TEST_MAX_GENERATIONS"
	drainEnv  = "TABLEFLIP_TEST_DRAIN_TIMEOUT"
	// termEnv says what the helper does on SIGTERM: "honour" closes its
	// connections and exits, anything else logs it and serves on.
	termEnv = "TABLEFLIP_TEST_TERM"
	// countWaitEnv sets connCountWait.
	countWaitEnv = "TABLEFLIP_TEST_COUNT_WAIT"
)

func init() { registerHelper("gens", helperGenerations) }

// helperGenerations is a generation of a server of long-lived
// connections: each keeps being served by the generation that accepted
// it until the client closes it (or the drain deadline ends the
// process). A connection's first line picks what it is:
//
//	echo     answers "echo <pid>", then echoes each line as "<pid> <line>"
//	upgrade  answers "ok" or "error <reason> <message>"
//	status   answers Stats as JSON
//	stop     calls Stop and answers "stopped"
//
// It prints "ready <pid> <tcp> <unix>", and events "draining" once Exit
// closed and its listeners are closed, "sigterm hits=<n>" and "exiting".
func helperGenerations() int {
	say := func(format string, args ...any) {
		fmt.Printf("event %d %s\n", os.Getpid(), fmt.Sprintf(format, args...))
	}
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	maxGen, _ := strconv.Atoi(os.Getenv(maxGenEnv))
	drain, _ := time.ParseDuration(os.Getenv(drainEnv))
	if d, err := time.ParseDuration(os.Getenv(countWaitEnv)); err == nil {
		connCountWait = d
	}
	upg, err := New(Options{PIDFile: os.Getenv(pidFileEnv), MaxGenerations: maxGen, DrainTimeout: drain,
		ControlSocket: os.Getenv(controlEnv)})
	if err != nil {
		say("new-error %v", err)
		return 1
	}
	defer upg.Stop()
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		say("listen-error %v", err)
		return 1
	}
	uln, err := upg.Listen("unix", os.Getenv(unixPathEnv))
	if err != nil {
		say("listen-error %v", err)
		return 1
	}
	if err := upg.Ready(); err != nil {
		say("ready-error %v", err)
		return 1
	}
	fmt.Printf("ready %d %s %s\n", os.Getpid(), ln.Addr(), uln.Addr())

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	// accepting: the accept loops must have stopped before wg.Wait.
	var accepting sync.WaitGroup
	serve := func(ln net.Listener) {
		defer accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveGeneration(upg, c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}
	accepting.Add(2)
	go serve(ln)
	go serve(uln)
	go func() {
		<-terms
		say("sigterm hits=%d", upg.Stats().DrainDeadlineHits)
		if os.Getenv(termEnv) != "honour" {
			return
		}
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()

	<-upg.Exit()
	ln.Close()
	uln.Close()
	say("draining")
	accepting.Wait()
	wg.Wait()
	say("exiting")
	return 0
}

func serveGeneration(upg *Upgrader, c net.Conn) {
	defer c.Close()
	r := bufio.NewScanner(c)
	if !r.Scan() {
		return
	}
	pid := os.Getpid()
	switch cmd := r.Text(); cmd {
	case "echo":
		fmt.Fprintf(c, "echo %d\n", pid)
		for r.Scan() {
			fmt.Fprintf(c, "%d %s\n", pid, r.Text())
		}
	case "upgrade":
		if err := upg.Upgrade(); err != nil {
			fmt.Fprintf(c, "error %s %v\n", controlError(err).Reason, err)
		} else {
			fmt.Fprintln(c, "ok")
		}
	case "status":
		json.NewEncoder(c).Encode(upg.Stats())
	case "stop":
		upg.Stop()
		fmt.Fprintln(c, "stopped")
	default:
		fmt.Fprintf(c, "unknown command %q\n", cmd)
	}
}

// genClient is a long-lived echo connection and the generation serving
// it.
type genClient struct {
	c   net.Conn
	r   *bufio.Reader
	pid int
	n   int
}

func dialEcho(t *testing.T, network, addr string) *genClient {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &genClient{c: c, r: bufio.NewReader(c)}
	fmt.Fprintln(c, "echo")
	line := cl.line(t)
	if _, err := fmt.Sscanf(line, "echo %d", &cl.pid); err != nil {
		t.Fatalf("echo greeting %q: %v", line, err)
	}
	return cl
}

func (cl *genClient) line(t *testing.T) string {
	t.Helper()
	cl.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := cl.r.ReadString('\n')
	if err != nil {
		t.Fatalf("connection to pid %d: %v", cl.pid, err)
	}
	return strings.TrimSpace(line)
}

// echo checks that the connection is still served by its generation.
func (cl *genClient) echo(t *testing.T) {
	t.Helper()
	cl.n++
	fmt.Fprintf(cl.c, "ping %d\n", cl.n)
	if got, want := cl.line(t), fmt.Sprintf("%d ping %d", cl.pid, cl.n); got != want {
		t.Fatalf("echo: got %q, want %q", got, want)
	}
}

func (s *server) status() Stats {
	s.t.Helper()
	var st Stats
	if err := json.Unmarshal([]byte(s.command("status")), &st); err != nil {
		s.t.Fatalf("status: %v", err)
	}
	return st
}

// upgradeDraining upgrades and waits until the new generation serves and
// the old one has closed its listeners, not until it exits.
func (s *server) upgradeDraining() {
	s.t.Helper()
	old := s.pid
	if reply := s.command("upgrade"); reply != "ok" {
		s.t.Fatalf("upgrade of pid %d: got %q, want ok", old, reply)
	}
	s.pid, _ = strconv.Atoi(s.waitLine("ready ")[1])
	s.waitEvent(old, "draining")
}

func startGenServer(t testing.TB, env ...string) (*server, string) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "echo.sock")
	// The race detector sleeps a second before a process exits: more
	// than the grace a generation that honours SIGTERM gets here.
	env = append(env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	env = append(env, helper("gens"), unixPathEnv+"="+sock, controlEnv+"="+filepath.Join(dir, "ctl.sock"))
	s := startServer(t, serverConfig{env: env})
	if s.udp != sock {
		t.Fatalf("unix listener at %s, want %s", s.udp, sock)
	}
	return s, sock
}

// TestGenerationsBackToBack: three upgrades in a row while every older
// generation still serves its long-lived connections, then a fourth at
// the cap of four is refused; once the first generation's clients leave,
// it exits and the upgrade goes through.
func TestGenerationsBackToBack(t *testing.T) {
	const maxGen = 4
	s, sock := startGenServer(t, maxGenEnv+"="+strconv.Itoa(maxGen))
	pgid := s.first.Process.Pid
	gens := []int{s.pid}
	byGen := map[int][]*genClient{}
	var all []*genClient
	open := func() {
		for _, cl := range []*genClient{dialEcho(t, "tcp", s.tcp), dialEcho(t, "tcp", s.tcp), dialEcho(t, "unix", sock)} {
			if cl.pid != s.pid {
				t.Fatalf("new connection served by pid %d, want the serving %d", cl.pid, s.pid)
			}
			byGen[cl.pid] = append(byGen[cl.pid], cl)
			all = append(all, cl)
		}
	}
	checkAll := func() {
		t.Helper()
		for _, cl := range all {
			cl.echo(t)
		}
		if n := processesInGroup(pgid, false); n != len(gens) || n > maxGen {
			t.Fatalf("%d generations alive, want %d (cap %d)", n, len(gens), maxGen)
		}
		if b, _ := os.ReadFile(s.pidFile); strings.TrimSpace(string(b)) != strconv.Itoa(s.pid) {
			t.Fatalf("PID file says %q, want the serving %d", b, s.pid)
		}
		st := s.status()
		var pids []int
		for _, g := range st.Generations {
			pids = append(pids, g.PID)
			if g.Started.IsZero() || g.AgeSeconds <= 0 {
				t.Errorf("generation %d: no age in %+v", g.PID, g)
			}
			if (g.PID == s.pid) != g.DrainingSince.IsZero() {
				t.Errorf("generation %d: draining since %v, serving pid %d", g.PID, g.DrainingSince, s.pid)
			}
			if g.PID != s.pid && g.Conns != len(byGen[g.PID]) {
				t.Errorf("generation %d holds %d connections, status says %d", g.PID, len(byGen[g.PID]), g.Conns)
			}
		}
		if !slices.Equal(pids, gens) || !slices.Equal(st.Draining, gens[:len(gens)-1]) {
			t.Fatalf("status lists generations %v, draining %v; want %v", pids, st.Draining, gens)
		}
	}

	open()
	for range 3 {
		s.upgradeDraining()
		gens = append(gens, s.pid)
		open()
		checkAll()
	}

	start := time.Now()
	reply := s.command("upgrade")
	if !strings.HasPrefix(reply, "error "+ReasonTooMany+" ") || !strings.Contains(reply, ErrTooManyGenerations.Error()) {
		t.Fatalf("upgrade at the cap: got %q, want %s", reply, ReasonTooMany)
	}
	t.Logf("upgrade at the cap refused in %v: %s", time.Since(start), reply)
	checkAll()
	if st := s.status(); st.UpgradesAttempted != 0 {
		t.Errorf("the refused upgrade counted as attempted: %+v", st)
	}

	// The first generation's clients leave: it exits, and takes neither
	// the socket file nor the PID file with it.
	first := gens[0]
	for _, cl := range byGen[first] {
		cl.c.Close()
	}
	s.waitEvent(first, "exiting")
	if err := s.first.Wait(); err != nil {
		t.Fatalf("first generation: %v", err)
	}
	all = slices.DeleteFunc(all, func(cl *genClient) bool { return cl.pid == first })
	gens = gens[1:]
	checkAll()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("a draining generation's exit removed the socket file: %v", err)
	}

	s.upgradeDraining()
	gens = append(gens, s.pid)
	open()
	checkAll()

	// Every client leaves; the draining generations exit; a final Stop
	// of the serving one removes the files.
	for _, pid := range gens[:len(gens)-1] {
		for _, cl := range byGen[pid] {
			cl.c.Close()
		}
		s.waitEvent(pid, "exiting")
		s.reap(pid)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("draining generations' exits removed the socket file: %v", err)
	}
	if reply := s.command("stop"); reply != "stopped" {
		t.Fatalf("stop: %q", reply)
	}
	for _, cl := range byGen[s.pid] {
		cl.c.Close()
	}
	s.waitEvent(s.pid, "exiting")
	for _, path := range []string{sock, s.pidFile} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after the final Stop: %v", path, err)
		}
	}
}

// TestDrainDeadline: a generation still holding a connection at its
// DrainTimeout is sent SIGTERM; one that ignores it is killed after the
// grace, one that honours it exits by it.
func TestDrainDeadline(t *testing.T) {
	const drain = 500 * time.Millisecond
	for _, tc := range []struct {
		term   string
		killed bool
	}{{"ignore", true}, {"honour", false}} {
		t.Run(tc.term, func(t *testing.T) {
			s, sock := startGenServer(t, maxGenEnv+"=3", drainEnv+"="+drain.String(), termEnv+"="+tc.term)
			old := s.pid
			held := dialEcho(t, "unix", sock)
			start := time.Now()
			s.upgradeDraining()
			// Served until the deadline.
			held.echo(t)
			if got := s.waitEvent(old, "sigterm"); got != "sigterm hits=1" {
				t.Errorf("sigterm event: %q, want hits=1", got)
			}
			term := time.Since(start)
			err := s.first.Wait()
			exit := time.Since(start)
			var ee *exec.ExitError
			switch {
			case tc.killed:
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("generation that ignores SIGTERM: %v, want killed by SIGKILL", err)
				}
				if exit < 2*drain {
					t.Errorf("killed %v after the upgrade, before the deadline and the grace (%v)", exit, 2*drain)
				}
			default:
				if err != nil {
					t.Fatalf("generation that honours SIGTERM: %v, want exit 0", err)
				}
				s.waitEvent(old, "exiting")
			}
			if term < drain {
				t.Errorf("SIGTERM %v after the upgrade, before DrainTimeout %v", term, drain)
			}
			t.Logf("%s: SIGTERM after %v, exit after %v", tc.term, term, exit)
			held.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := held.r.ReadString('\n'); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("held connection after the deadline: %v, want it closed", err)
			}
			// The new generation serves on, with the files in place.
			cl := dialEcho(t, "unix", sock)
			if cl.pid != s.pid {
				t.Fatalf("served by %d, want %d", cl.pid, s.pid)
			}
			cl.echo(t)
			if st := s.status(); len(st.Draining) != 0 || len(st.Generations) != 1 {
				t.Errorf("after the deadline: draining %v, generations %+v", st.Draining, st.Generations)
			}
		})
	}
}

// TestGenerationsCountWhenAMiddleOneExits: the serving generation counts
// the connections of every draining one, also of one whose child has
// exited already (generation 1, after generation 2).
func TestGenerationsCountWhenAMiddleOneExits(t *testing.T) {
	s, sock := startGenServer(t, maxGenEnv+"=3")
	first := s.pid
	held := []*genClient{dialEcho(t, "tcp", s.tcp), dialEcho(t, "unix", sock)}
	s.upgradeDraining()
	second := s.pid
	brief := dialEcho(t, "tcp", s.tcp)
	s.upgradeDraining()
	brief.c.Close()
	s.waitEvent(second, "exiting")
	// The first generation, its parent, reaps it.
	var st Stats
	waitFor(t, "the second generation to exit", func() bool {
		st = s.status()
		return len(st.Generations) == 2
	})
	if st.Generations[0].PID != first {
		t.Fatalf("status lists %+v, want generation %d draining and %d serving", st.Generations, first, s.pid)
	}
	if got := st.Generations[0].Conns; got != len(held) {
		t.Errorf("generation %d holds %d connections, status says %d", first, len(held), got)
	}
	// Its own: the connection asking for the status.
	if got := st.Generations[1].Conns; got != 1 {
		t.Errorf("serving generation: status says %d connections, want 1 (the status request's)", got)
	}
	for _, cl := range held {
		cl.echo(t)
	}
}

// TestStatusDoesNotDelayUpgrade: a status request waiting for a draining
// generation that does not answer (stopped by SIGSTOP) does not hold up an
// upgrade asked for meanwhile.
func TestStatusDoesNotDelayUpgrade(t *testing.T) {
	s, sock := startGenServer(t, maxGenEnv+"=3", countWaitEnv+"=5m")
	first := s.pid
	dialEcho(t, "unix", sock)
	s.upgradeDraining()
	if err := syscall.Kill(first, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(first, syscall.SIGCONT)
	// kill returns before every thread has stopped.
	waitFor(t, "generation 1 to stop", func() bool { return stopped(first) })

	status := make(chan string, 1)
	go func() {
		c, err := net.Dial("tcp", s.tcp)
		if err != nil {
			status <- err.Error()
			return
		}
		defer c.Close()
		fmt.Fprintln(c, "status")
		b, _ := io.ReadAll(c)
		status <- string(b)
	}()
	// The request is in flight once it has reached the stopped
	// generation's socket.
	waitFor(t, "the status request to reach the stopped generation", func() bool {
		return unixConnections(t, connCountAddr(first)) > 1
	})
	s.upgradeDraining()
	select {
	case got := <-status:
		t.Fatalf("status answered while generation %d was stopped: %s", first, got)
	default:
	}
	syscall.Kill(first, syscall.SIGCONT)
	var st Stats
	if err := json.Unmarshal([]byte(<-status), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Generations) < 1 || st.Generations[0].PID != first || st.Generations[0].Conns != 1 {
		t.Errorf("status after SIGCONT lists %+v, want generation %d first with 1 connection", st.Generations, first)
	}
}

// unixConnections counts the Unix sockets bound to name (abstract names
// start with @), the listener and the connections it has accepted or
// queued.
func unixConnections(t *testing.T, name string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 8 && f[7] == name {
			n++
		}
	}
	return n
}

// stopped reports whether every thread of pid is stopped by a signal.
func stopped(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			return false
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) == 0 || f[0] != "T" {
			return false
		}
	}
	return len(tasks) > 0
}
