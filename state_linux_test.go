//go:build linux

package tableflip

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const stateSizeEnv = "TABLEFLIP_TEST_STATE_SIZE"

func init() { registerHelper("stateserver", helperStateServer) }

// statePattern writes n bytes of a pattern both sides can make.
func statePattern(w io.Writer, n int64) error {
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i*7 + 3)
	}
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func patternSum(n int64) string {
	h := sha256.New()
	statePattern(h, n)
	return fmt.Sprintf("%x", h.Sum(nil)[:8])
}

// helperStateServer is a generation of a server that hands state on. The
// old generation reads "writer-*" modes from the mode file when it
// writes, the new one "reader-*" modes when it starts.
func helperStateServer() int {
	say := func(format string, args ...any) {
		fmt.Printf("event %d %s\n", os.Getpid(), fmt.Sprintf(format, args...))
	}
	size, _ := strconv.ParseInt(os.Getenv(stateSizeEnv), 10, 64)
	timeout, _ := time.ParseDuration(os.Getenv(timeoutEnv))
	upg, err := New(Options{
		UpgradeTimeout: timeout,
		WriteState: func(w io.Writer) error {
			switch readMode() {
			case "writer-fails":
				statePattern(w, 1000)
				return errors.New("disk on fire")
			case "writer-blocks":
				// A writer that never returns, whatever happens
				// to the socket.
				say("writer blocking")
				select {}
			case "writer-dies":
				statePattern(w, size/2)
				// Past the writer's buffer: chunks of half the
				// state are on their way when the process dies.
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			return statePattern(w, size)
		},
		OnUpgradeFailed: func(err error) { say("upgrade-failed %v", err) },
	})
	if err != nil {
		say("new-error %v", err)
		return 1
	}
	defer upg.Stop()

	mode := readMode()
	r, err := upg.State()
	switch {
	case errors.Is(err, ErrNoState):
		say("state none")
	case err != nil:
		say("state-error %v", err)
	default:
		h := sha256.New()
		n, err := io.Copy(h, r)
		say("state bytes=%d sum=%x err=%v", n, h.Sum(nil)[:8], err)
		if err != nil || mode == "reader-rejects" {
			return 1
		}
	}

	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		say("listen-error %v", err)
		return 1
	}
	if err := upg.Ready(); err != nil {
		say("ready-error %v", err)
		return 1
	}
	say("peak-rss %d", peakRSS())
	fmt.Printf("ready %d %s -\n", os.Getpid(), ln.Addr())
	var conns connServer
	conns.serve(ln, func(c net.Conn) { handleCommands(upg, ln, c) })
	<-upg.Exit()
	ln.Close()
	// The upgrade command answers after Exit is closed.
	conns.wait()
	say("peak-rss %d", peakRSS())
	say("exiting")
	return 0
}

func startStateServer(t testing.TB, size int64, env ...string) *server {
	t.Helper()
	env = append(env, helper("stateserver"), stateSizeEnv+"="+strconv.FormatInt(size, 10))
	s := startServer(t, serverConfig{env: env})
	s.udp = "-"
	if got := s.waitEvent(s.pid, "state"); got != "state none" {
		t.Errorf("first start: %q, want no state", got)
	}
	return s
}

func TestStateHandedOver(t *testing.T) {
	for _, size := range []int64{0, 1, 256 << 20} {
		t.Run(strconv.FormatInt(size, 10), func(t *testing.T) {
			if size > 1<<20 && testing.Short() {
				t.Skip("256 MiB of state in -short mode")
			}
			s := startStateServer(t, size)
			pid := s.upgrade()
			want := fmt.Sprintf("state bytes=%d sum=%s err=<nil>", size, patternSum(size))
			if got := s.waitEvent(pid, "state"); got != want {
				t.Errorf("new generation read %q, want %q", got, want)
			}
		})
	}
}

func TestStateFailures(t *testing.T) {
	s := startStateServer(t, 4<<20)

	t.Run("writer fails", func(t *testing.T) {
		reply := s.failedUpgrade("writer-fails")
		if !strings.Contains(reply, "disk on fire") || !strings.Contains(reply, "ErrHandover") {
			t.Errorf("upgrade with a failing writer: %q, want the writer's error", reply)
		}
		if got := s.waitEvent(s.pid, "upgrade-failed"); !strings.Contains(got, "disk on fire") {
			t.Errorf("OnUpgradeFailed got %q", got)
		}
		if got := strings.Join(waitStateEvent(s)[2:], " "); !strings.Contains(got, "state writer failed: disk on fire") {
			t.Errorf("new generation read %q, want the writer's error", got)
		}
	})

	t.Run("reader rejects", func(t *testing.T) {
		// The new generation returns from main, whose deferred Stop
		// tells the parent it stopped before Ready; whichever the
		// parent learns first, that or the exit, the upgrade fails with
		// the exit status.
		reply := s.failedUpgrade("reader-rejects")
		if !strings.Contains(reply, "ChildError{code=1,") || !containsAny(reply, []string{"ErrChildExited", "upgrader is stopped"}) {
			t.Errorf("upgrade with a new generation that rejects the state: %q, want it to have exited 1 or stopped", reply)
		}
		if got := s.waitEvent(s.pid, "upgrade-failed"); !strings.Contains(got, "exit status 1") {
			t.Errorf("OnUpgradeFailed got %q, want the exit status", got)
		}
		want := fmt.Sprintf("state bytes=%d sum=%s err=<nil>", 4<<20, patternSum(4<<20))
		if got := strings.Join(waitStateEvent(s)[2:], " "); got != want {
			t.Errorf("new generation read %q, want %q before it rejected it", got, want)
		}
	})

	t.Run("writer dies", func(t *testing.T) {
		s.setMode("writer-dies")
		c, err := net.Dial("tcp", s.tcp)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(c, "upgrade")
		io.Copy(io.Discard, c)
		c.Close()
		s.first.Wait()
		fields := waitStateEvent(s)
		if !strings.Contains(strings.Join(fields, " "), "truncated") {
			t.Errorf("new generation after its parent died mid-stream: %q, want a truncated-state error", fields)
		}
		child, _ := strconv.Atoi(fields[1])
		var ws syscall.WaitStatus
		syscall.Wait4(child, &ws, 0, nil)
		if ws.ExitStatus() != 1 {
			t.Errorf("new generation exited with %v, want status 1", ws)
		}
		s.pid = 0
	})
}

// TestStateWriterNeverReturns: a WriteState that blocks for ever fails
// its upgrade at UpgradeTimeout, does not wedge the next upgrade, and
// does not keep Stop from ending the process.
func TestStateWriterNeverReturns(t *testing.T) {
	s := startStateServer(t, 1000, timeoutEnv+"=1s")
	reply := s.failedUpgrade("writer-blocks")
	s.waitEvent(s.pid, "writer blocking")
	if !strings.HasSuffix(reply, "[ErrTimeout,ChildError{code=-1,signal=15}]") {
		t.Errorf("upgrade with a writer that never returns: %q, want a timeout", reply)
	}
	if got := s.waitEvent(s.pid, "upgrade-failed"); !strings.Contains(got, "timed out") {
		t.Errorf("OnUpgradeFailed got %q, want the timeout", got)
	}
	s.upgrade()
	s.stopAll(t)

	// Stop while such a writer blocks, in an upgrade whose deadline is
	// far beyond the test's own (a minute per wait): the process exits.
	s2 := startStateServer(t, 1000, timeoutEnv+"=1h")
	s2.setMode("writer-blocks")
	c, err := net.Dial("tcp", s2.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "upgrade")
	s2.waitEvent(s2.pid, "writer blocking")
	if got := s2.command("stop"); got != "stopped" {
		t.Fatalf("stop: %q", got)
	}
	s2.waitEvent(s2.pid, "exiting")
	s2.reap(s2.pid)
	s2.pid = 0
	noChildren(t)
}

func TestStateFirstStart(t *testing.T) {
	u := firstGeneration(t, Options{})
	if _, err := u.State(); !errors.Is(err, ErrNoState) {
		t.Errorf("State on a first start: %v, want ErrNoState", err)
	}
}

// waitStateEvent returns the next report of a new generation on the
// state it read.
func waitStateEvent(s *server) []string {
	s.t.Helper()
	for {
		if fields := s.waitLine("event "); fields[2] == "state" {
			return fields
		}
	}
}

// peakRSS is this process's peak resident set size in KiB (VmHWM).
func peakRSS() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return -1
}
