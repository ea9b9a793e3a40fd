//go:build linux

package tableflip

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

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
	cmd.Env = append(os.Environ(), helper("faultserver"), modeFileEnv+"="+mode)
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
	// The output has ended, so every generation has exited: one that
	// was stopped before it wrote a line is reaped here too.
	s.reapGroup()
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
