//go:build unix

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// Servers of the line protocol and of datagrams, on drain.Listener and
// drain.PacketServer, each upgrading on SIGHUP; some lose what they were
// sent, and some hold what the fd verdict must or must not count.
func init() {
	registerHelper("line", func(addr, pidFile string) int { return lineServer(addr, pidFile, 10*time.Second, nil) })
	registerHelper("line-deadline", func(addr, pidFile string) int {
		// A long-lived connection stays busy: the deadline cuts it.
		return lineServer(addr, pidFile, 200*time.Millisecond, nil)
	})
	registerHelper("line-lossy", func(addr, pidFile string) int {
		return lineServer(addr, pidFile, 10*time.Second, func(n int64) bool { return n%5 == 0 })
	})
	registerHelper("udp", func(addr, pidFile string) int { return udpServer(addr, pidFile, nil) })
	registerHelper("udp-lossy", func(addr, pidFile string) int {
		return udpServer(addr, pidFile, func(n int64) bool { return n%5 == 0 })
	})
	registerHelper("child-dies", helperChildDies)
	registerHelper("outgoing", helperOutgoing)
	registerHelper("fd-leak", helperFDLeak)
}

// lineServer echoes lines on drain.Listener (see serveLines).
func lineServer(addr, pidFile string, drainTimeout time.Duration, lose func(n int64) bool) int {
	return helperGeneration(pidFile, drainTimeout, func(upg *tableflip.Upgrader, _ int) (func(context.Context), error) {
		return serveLines(upg, addr, lose)
	})
}

// serveLines echoes lines on drain.Listener. From the drain on it serves
// a connection until it has been idle for a second, and the deadline cuts
// one that stays busy. It closes the connection of each line for which
// lose returns true, without an answer.
func serveLines(upg *tableflip.Upgrader, addr string, lose func(n int64) bool) (func(context.Context), error) {
	ln, err := upg.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := drain.NewListener(ln, drain.Options{})
	var lines atomic.Int64
	go func() {
		for {
			c, err := l.AcceptConn()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				const grace = time.Second
				stop := context.AfterFunc(c.Context(), func() { c.SetReadDeadline(time.Now().Add(grace)) })
				defer stop()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || lose != nil && lose(lines.Add(1)) {
						return
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
					if c.Context().Err() != nil {
						c.SetReadDeadline(time.Now().Add(grace))
					}
				}
			}()
		}
	}()
	return func(ctx context.Context) { l.Drain(ctx) }, nil
}

// udpServer echoes datagrams on drain.PacketServer, but for those for
// which lose returns true.
func udpServer(addr, pidFile string, lose func(n int64) bool) int {
	return helperGeneration(pidFile, 10*time.Second, func(upg *tableflip.Upgrader, gen int) (func(context.Context), error) {
		pc, err := upg.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		var n atomic.Int64
		srv := drain.NewPacketServer(func(conn net.PacketConn, p []byte, from net.Addr) {
			if lose == nil || !lose(n.Add(1)) {
				conn.WriteTo(p, from)
			}
		}, drain.Options{})
		for range 2 {
			go srv.Serve(pc)
		}
		return func(ctx context.Context) { srv.Drain(ctx) }, nil
	})
}

// helperChildDies serves lines, but a new generation fails at once.
func helperChildDies(addr, pidFile string) int {
	if os.Getenv("TABLEFLIP_CHECK_TEST_PARENT") != "" {
		fmt.Fprintln(os.Stderr, "new generation: config file broken")
		return 1
	}
	os.Setenv("TABLEFLIP_CHECK_TEST_PARENT", "1") // for the next generation
	return lineServer(addr, pidFile, 10*time.Second, nil)
}

// helperOutgoing serves lines, and each generation holds connections of
// its own to a backend, more in each generation, as a gRPC server holds
// client connections: the fd verdict must not count them. (The backend
// is a listener of its own, in the same process.)
func helperOutgoing(addr, pidFile string) int {
	return helperGeneration(pidFile, 10*time.Second, func(upg *tableflip.Upgrader, gen int) (func(context.Context), error) {
		stop, err := serveLines(upg, addr, nil)
		if err != nil {
			return nil, err
		}
		backend, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		var conns []net.Conn
		for range 3 * gen {
			c, err := net.Dial("tcp", backend.Addr().String())
			if err != nil {
				return nil, err
			}
			conns = append(conns, c)
		}
		return func(ctx context.Context) {
			for _, c := range conns {
				c.Close()
			}
			backend.Close()
			stop(ctx)
		}, nil
	})
}

// leaked keeps helperFDLeak's files from the garbage collector, which
// would close them.
var leaked []*os.File

// helperFDLeak serves lines and leaks a file more in each generation.
func helperFDLeak(addr, pidFile string) int {
	return helperGeneration(pidFile, 10*time.Second, func(upg *tableflip.Upgrader, gen int) (func(context.Context), error) {
		for range gen {
			f, err := os.Open(os.DevNull)
			if err != nil {
				return nil, err
			}
			leaked = append(leaked, f)
		}
		return serveLines(upg, addr, nil)
	})
}

// checkJSON runs check with -json and decodes the report.
func checkJSON(t *testing.T, args ...string) (int, *report, string) {
	t.Helper()
	code, stdout, stderr := runCheckCmd(t, append([]string{"-json"}, args...)...)
	var rep report
	if stdout != "" {
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("bad JSON: %v", err)
		}
	}
	return code, &rep, stderr
}

func modeOf(rep *report, m loadgen.Mode) *modeReport {
	for i := range rep.Modes {
		if rep.Modes[i].Mode == m {
			return &rep.Modes[i]
		}
	}
	return nil
}

// Each exchange on a connection of its own, and datagrams: nothing lost
// on servers that drain.
func TestCheckLineAndDatagramServers(t *testing.T) {
	for _, tt := range []struct{ helper, scheme, mode string }{
		{"line", "tcp", "line"},
		{"udp", "udp", "datagram"},
	} {
		t.Run(tt.helper, func(t *testing.T) {
			args, url, _ := helperServerOn(t, tt.helper, tt.scheme)
			code, rep, _ := checkJSON(t, append([]string{"-upgrades", "3", "-interval", "50ms", "-c", "3"}, args...)...)
			m := modeOf(rep, loadgen.Mode(tt.mode))
			if code != exitOK || !rep.Pass || m == nil || m.Requests == 0 || rep.Failed != 0 || len(rep.Upgrades) != 3 {
				t.Fatalf("exit %d, verdict %q, modes %+v, %d upgrades; want a pass of 3 upgrades in mode %s", code, rep.Verdict, rep.Modes, len(rep.Upgrades), tt.mode)
			}
			if rep.Method != "" || rep.URLs[0] != url {
				t.Errorf("method %q, URLs %q; want none and %s", rep.Method, rep.URLs, url)
			}
		})
	}
}

// Long-lived connections held across upgrades: each upgrade's drain
// deadline cuts every one of them, which is reported, and the report
// passes.
func TestCheckLongLivedCut(t *testing.T) {
	const upgrades, conns = 3, 2
	args, _, _ := helperServerOn(t, "line-deadline", "tcp")
	htmlFile := filepath.Join(t.TempDir(), "report.html")
	code, rep, _ := checkJSON(t, append([]string{"-upgrades", fmt.Sprint(upgrades), "-interval", "50ms", "-c", fmt.Sprint(conns),
		"-mode", "line,longlived", "-pace", "5ms", "-html", htmlFile}, args...)...)
	if code != exitOK || !rep.Pass {
		t.Fatalf("exit %d, verdict %q; want a pass", code, rep.Verdict)
	}
	ll := modeOf(rep, loadgen.ModeLongLived)
	if ll == nil || ll.Cut != upgrades*conns || rep.Cut != ll.Cut || ll.Failed != 0 {
		t.Errorf("long-lived: %+v, %d cut in all; want %d cut (each connection at each upgrade), none failed", ll, rep.Cut, upgrades*conns)
	}
	if rep.CutAfterReady.Count != rep.Cut {
		t.Errorf("cut after ready: %v, want %d", rep.CutAfterReady, rep.Cut)
	}
	if !strings.Contains(rep.Verdict, fmt.Sprintf("draining generations cut %d long-lived connections", upgrades*conns)) {
		t.Errorf("verdict %q does not say what the drain cut", rep.Verdict)
	}
	html, err := os.ReadFile(htmlFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(html), "cut by the drain</title>") {
		t.Errorf("the HTML timeline shows no cut")
	}
}

// Servers that lose lines, connections or datagrams fail the check.
func TestCheckLosingServers(t *testing.T) {
	for _, tt := range []struct {
		name, helper, scheme string
		flags                []string
		want                 []string
	}{
		{"line", "line-lossy", "tcp", []string{"-mode", "line"}, []string{"requests failed", "eof"}},
		// Connections that end between the first and the first upgrade
		// are lost, not cut.
		{"longlived", "line-lossy", "tcp", []string{"-mode", "longlived", "-pace", "1ms", "-interval", "200ms"}, []string{"requests failed", "eof"}},
		{"datagram", "udp-lossy", "udp", []string{"-timeout", "500ms"}, []string{"requests failed", "timeout", "no answer to datagram"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args, _, _ := helperServerOn(t, tt.helper, tt.scheme)
			code, stdout, _ := runCheckCmd(t, append(append([]string{"-upgrades", "1", "-interval", "50ms", "-c", "2"}, tt.flags...), args...)...)
			if code != exitFailed {
				t.Errorf("exit %d, want %d", code, exitFailed)
			}
			for _, want := range append(tt.want, "verdict: FAIL") {
				if !strings.Contains(stdout, want) {
					t.Errorf("report lacks %q", want)
				}
			}
		})
	}
}

// A new generation that dies at once is reported when it dies, not when
// -upgrade-timeout runs out.
func TestCheckNewGenerationDies(t *testing.T) {
	ev, err := openProcEvents()
	switch {
	case err != nil && os.Getenv("CI") != "":
		t.Fatalf("the kernel's process events connector: %v; without it the check may miss a new generation that lives a few milliseconds", err)
	case err != nil:
		t.Skipf("the kernel's process events connector: %v", err)
	}
	ev.close()
	args, _, _ := helperServerOn(t, "child-dies", "tcp")
	code, _, stderr := runCheckCmd(t, append([]string{"-upgrades", "1", "-interval", "10ms", "-c", "1", "-upgrade-timeout", "10m"}, args...)...)
	if code != exitServer {
		t.Errorf("exit %d, want %d", code, exitServer)
	}
	for _, want := range []string{"upgrade 1: the new generation (pid ", "ended (exit status 1) ", "before it was ready; generation 1 (pid ", "serves on", "new generation: config file broken"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if strings.Contains(stderr, "-upgrade-timeout") {
		t.Errorf("reported as a timeout: %s", stderr)
	}
}

// The fd verdict does not count connections, the server's own included,
// and -fd-slack allows for other fds.
func TestCheckFDVerdict(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("fds are counted through /proc")
	}
	for _, tt := range []struct {
		helper string
		flags  []string
		code   int
	}{
		{"outgoing", nil, exitOK},
		{"fd-leak", nil, exitFailed},
		{"fd-leak", []string{"-fd-slack", "3"}, exitOK},
	} {
		t.Run(tt.helper+strings.Join(tt.flags, ""), func(t *testing.T) {
			args, _, _ := helperServerOn(t, tt.helper, "tcp")
			code, rep, _ := checkJSON(t, append(append([]string{"-upgrades", "2", "-interval", "20ms", "-c", "1"}, tt.flags...), args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d: %s", code, tt.code, rep.Verdict)
			}
			if rep.First == nil || rep.Last == nil || rep.First.FDs == nil || rep.Last.Conns == nil {
				t.Fatalf("generations %v, %v: no fd counts", rep.First, rep.Last)
			}
			switch tt.helper {
			case "outgoing":
				// 9 backend connections in generation 3 (their other
				// ends wait in the backend's accept queue).
				if *rep.Last.Conns < 9 {
					t.Errorf("last generation: %v, want at least 9 connections", rep.Last)
				}
			case "fd-leak":
				if grew := *rep.Last.FDs - *rep.First.FDs; grew != 2 {
					t.Errorf("fds grew by %d from %v to %v, want 2", grew, rep.First, rep.Last)
				}
				if tt.code == exitFailed && !strings.Contains(rep.Verdict, "open fds other than connections grew") {
					t.Errorf("verdict %q", rep.Verdict)
				}
			}
		})
	}
}

// -log keeps every generation's output, whatever the verdict.
func TestCheckLogFile(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "server.log")
	args, _, _ := helperServerOn(t, "line", "tcp")
	code, stdout, _ := runCheckCmd(t, append([]string{"-upgrades", "2", "-interval", "10ms", "-c", "1", "-log", logFile}, args...)...)
	if code != exitOK || !strings.Contains(stdout, "server output      "+logFile) {
		t.Errorf("exit %d; want a pass that names %s", code, logFile)
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for g := 1; g <= 3; g++ {
		if want := fmt.Sprintf("generation %d (pid ", g); !strings.Contains(string(b), want) {
			t.Errorf("server output lacks %q:\n%s", want, b)
		}
	}
}
