package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// Helper servers: the test binary runs itself as a server when this
// variable names one; its arguments are the address and the PID file.
const helperEnv = "TABLEFLIP_CHECK_TEST_HELPER"

var helpers = map[string]func(addr, pidFile string) int{
	"drop":        helperDrop,
	"linger":      helperLinger,
	"zombie":      helperZombie,
	"never-ready": helperNeverReady,
	"exit":        helperExit,
	"ignore-hup":  helperIgnoreHUP,
	"no-handler":  helperNoHandler,
}

var usedHelpers = map[string]bool{}

// registerHelper adds a helper server, from the file whose tests use it.
func registerHelper(name string, fn func(addr, pidFile string) int) {
	if _, dup := helpers[name]; dup {
		panic("helper server " + name + " registered twice")
	}
	helpers[name] = fn
}

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (isRunCommand(os.Args[1]) || os.Args[1] == "check") {
		// tableflip run, or a check in a process of its own
		// (TestCheckUnderNohup), whose helper server runs under the
		// environment below.
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(helpers[name](os.Args[1], os.Args[2]))
	}
	if len(os.Args) > 1 && os.Args[1] == sampleServerCommand {
		// The check re-runs its own executable, which here is the test
		// binary, as the sample server.
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	// Under the race detector a process lingers a second at exit by
	// default, and the check waits for each old generation's exit.
	// Races are still reported, in the server's output (runCheckCmd).
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" {
		for name := range helpers {
			if !usedHelpers[name] {
				fmt.Fprintf(os.Stderr, "helper server %q is not used by any test\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// helperServer returns the arguments that run helper name as an HTTP
// server, with the URL it serves and its PID file.
func helperServer(t *testing.T, name string) (args []string, url, pidFile string) {
	t.Helper()
	return helperServerOn(t, name, "http")
}

// helperServerOn is helperServer for a server of scheme: http, tcp or
// udp (see loadgen.Options.URL).
func helperServerOn(t *testing.T, name, scheme string) (args []string, url, pidFile string) {
	t.Helper()
	usedHelpers[name] = true
	t.Setenv(helperEnv, name)
	// The port is chosen here because -url must be known before the
	// server starts; another process could take it meanwhile, which on
	// a test machine it does not.
	var addr string
	if scheme == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		pc.Close()
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	url = scheme + "://" + addr
	if scheme == "http" {
		url += "/"
	}
	pidFile = filepath.Join(t.TempDir(), "server.pid")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"-url", url, "-pidfile", pidFile, "--", exe, addr, pidFile}, url, pidFile
}

func writePID(pidFile string) error {
	return os.WriteFile(pidFile, []byte(fmt.Sprintln(os.Getpid())), 0o644)
}

// helperDrop upgrades properly but closes every fifth request's
// connection without an answer.
func helperDrop(addr, pidFile string) int {
	return upgradingServer(addr, pidFile, 5, func() {})
}

// helperLinger never exits once its successor is ready.
func helperLinger(addr, pidFile string) int {
	return upgradingServer(addr, pidFile, 0, func() { time.Sleep(time.Hour) })
}

// helperZombie starts a child that exits at once and never waits for it.
func helperZombie(addr, pidFile string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The child must not be another zombie helper: that would start a
	// chain of them.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, helperEnv+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, helperEnv+"=exit")
	if _, err := os.StartProcess(exe, []string{exe, addr, pidFile}, &os.ProcAttr{Env: env}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return upgradingServer(addr, pidFile, 0, func() {})
}

// upgradingServer is a server on the Upgrader that upgrades on SIGHUP.
// It closes the connection of every dropEvery-th request without an
// answer (never, if 0) and calls exit once its successor is ready.
func upgradingServer(addr, pidFile string, dropEvery int64, exit func()) int {
	return helperGeneration(pidFile, 10*time.Second, func(upg *tableflip.Upgrader, _ int) (func(context.Context), error) {
		ln, err := upg.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		var n atomic.Int64
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					br := bufio.NewReader(c)
					for {
						req, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						io.Copy(io.Discard, req.Body)
						if dropEvery > 0 && n.Add(1)%dropEvery == 0 {
							return
						}
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
					}
				}()
			}
		}()
		return func(context.Context) {
			exit()
			ln.Close()
		}, nil
	})
}

// helperGeneration runs a generation on the Upgrader, set up as the
// README shows: SIGHUP upgrades, SIGTERM stops. It calls start with the
// generation's number before Ready, and once it is told to exit, drain
// with a deadline of drainTimeout. It says on standard error when it is
// ready, for -log.
func helperGeneration(pidFile string, drainTimeout time.Duration, start func(upg *tableflip.Upgrader, gen int) (drain func(context.Context), err error)) int {
	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer unnotify()
	upg, err := tableflip.New(tableflip.Options{PIDFile: pidFile, UpgradeSignal: syscall.SIGHUP})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer upg.Stop()
	go func() {
		<-stopped.Done()
		upg.Stop()
	}()
	gen := int(upg.Generation().Generation)
	stop, err := start(upg, gen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := upg.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "generation %d (pid %d) ready\n", gen, os.Getpid())
	<-upg.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	stop(ctx)
	return 0
}

func helperNeverReady(addr, pidFile string) int {
	fmt.Fprintln(os.Stderr, "starting, slowly")
	time.Sleep(time.Hour) // killed by the check long before
	return 0
}

func helperExit(addr, pidFile string) int {
	fmt.Fprintln(os.Stderr, "boom: config file missing")
	return 7
}

// serveAndWritePID serves HTTP on addr and writes the PID file, with no
// upgrade support at all.
func serveAndWritePID(addr, pidFile string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := writePID(pidFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	return 1
}

func helperIgnoreHUP(addr, pidFile string) int {
	signal.Ignore(syscall.SIGHUP)
	return serveAndWritePID(addr, pidFile)
}

func helperNoHandler(addr, pidFile string) int {
	return serveAndWritePID(addr, pidFile)
}

// runCheckCmd runs "tableflip check args…" in this process and checks
// that nothing it started is left, and that the server's output (kept
// with -log unless args say where) reports no race and no panic.
func runCheckCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	logFile := ""
	if !slices.Contains(args, "-log") {
		logFile = filepath.Join(t.TempDir(), "server.log")
		args = append([]string{"-log", logFile}, args...)
	}
	var out, errb bytes.Buffer
	code = run(append([]string{"check"}, args...), &out, &errb)
	t.Logf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	if left := proctree.Descendants(os.Getpid()); len(left) > 0 {
		t.Errorf("processes left behind: %+v", left)
	}
	if b, err := os.ReadFile(logFile); err == nil && (bytes.Contains(b, []byte("DATA RACE")) || bytes.Contains(b, []byte("panic:"))) {
		t.Errorf("the server failed:\n%s", b)
	}
	return code, out.String(), errb.String()
}

func TestCheckSampleServer(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	htmlFile := filepath.Join(t.TempDir(), "report.html")
	code, stdout, _ := runCheckCmd(t, "-upgrades", "3", "-interval", "20ms", "-c", "2", "-json", "-html", htmlFile)
	if code != exitOK {
		t.Fatalf("exit %d, want %d", code, exitOK)
	}
	var rep report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("bad JSON: %v", err)
	}
	if !rep.Pass || rep.Failed != 0 || rep.Requests == 0 || len(rep.Problems) != 0 {
		t.Errorf("report: pass %v, %d of %d failed, problems %q", rep.Pass, rep.Failed, rep.Requests, rep.Problems)
	}
	if len(rep.Modes) != 4 {
		t.Errorf("%d modes, want 4", len(rep.Modes))
	}
	pids := map[int]bool{}
	for _, u := range rep.Upgrades {
		pids[u.OldPID], pids[u.NewPID] = true, true
		if !u.OldExited {
			t.Errorf("upgrade %d: old generation did not exit", u.N)
		}
	}
	if len(rep.Upgrades) != 3 || len(pids) != 4 {
		t.Errorf("%d upgrades over %d pids, want 3 over 4: %+v", len(rep.Upgrades), len(pids), rep.Upgrades)
	}
	if rep.UpgradeToReady.Count != 3 {
		t.Errorf("upgrade-to-ready count %d, want 3", rep.UpgradeToReady.Count)
	}
	if runtime.GOOS == "linux" && (rep.First == nil || rep.First.FDs == nil || rep.Last == nil || rep.Last.RSSKiB == nil) {
		t.Errorf("fds/RSS missing: first %v, last %v", rep.First, rep.Last)
	}
	html, err := os.ReadFile(htmlFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "PASS"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
	for _, bad := range []string{"<script src", "<link", "<img", "@import"} {
		if bytes.Contains(html, []byte(bad)) {
			t.Errorf("HTML report is not self-contained: has %q", bad)
		}
	}
}

func TestCheckSampleServerText(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	code, stdout, stderr := runCheckCmd(t, "-upgrades", "1", "-interval", "10ms", "-c", "1", "-mode", "keepalive", "-method", "POST", "-body", "hello")
	if code != exitOK {
		t.Fatalf("exit %d, want %d", code, exitOK)
	}
	for _, want := range []string{"upgrade to ready", "latency upgrading", "first generation", "verdict: PASS"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if !strings.Contains(stderr, "upgrade 1: pid ") {
		t.Errorf("no plain progress line on a non-terminal: %q", stderr)
	}
}

func TestCheckServerDropsRequests(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	args, _, _ := helperServer(t, "drop")
	code, stdout, _ := runCheckCmd(t, append([]string{"-upgrades", "1", "-interval", "20ms", "-mode", "keepalive", "-c", "2"}, args...)...)
	if code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	for _, want := range []string{"eof", "connection closed before any response", "verdict: FAIL", "requests failed"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestCheckLeaks(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	for _, tt := range []struct {
		helper string
		flags  []string
		want   []string
	}{
		// It never exits, so any -exit-timeout will do.
		{"linger", []string{"-exit-timeout", "100ms"}, []string{"old generation 1 still running", "was still running", "1 process left behind"}},
		{"zombie", nil, []string{"zombie: its parent does not wait for it", "1 process left behind"}},
	} {
		t.Run(tt.helper, func(t *testing.T) {
			if tt.helper == "zombie" && runtime.GOOS != "linux" {
				t.Skip("zombies are found through /proc")
			}
			args, _, _ := helperServer(t, tt.helper)
			code, stdout, _ := runCheckCmd(t, append(append([]string{"-upgrades", "1", "-interval", "10ms", "-c", "1", "-mode", "keepalive"}, tt.flags...), args...)...)
			if code != exitFailed {
				t.Errorf("exit %d, want %d", code, exitFailed)
			}
			for _, want := range tt.want {
				if !strings.Contains(stdout, want) {
					t.Errorf("report lacks %q", want)
				}
			}
		})
	}
}

func TestCheckBrokenServers(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	tests := []struct {
		helper string
		flags  []string
		want   []string
	}{
		{"never-ready", []string{"-start-timeout", "2s"}, []string{"did not write its PID file", "starting, slowly"}},
		{"exit", nil, []string{"exited at once (exit status 7) without writing its PID file", "boom: config file missing"}},
		{"ignore-hup", []string{"-upgrade-timeout", "100ms"}, []string{"ignores the signal"}},
		{"no-handler", nil, []string{"was killed by SIGHUP: the server does not handle that signal"}},
	}
	for _, tt := range tests {
		t.Run(tt.helper, func(t *testing.T) {
			args, _, _ := helperServer(t, tt.helper)
			code, _, stderr := runCheckCmd(t, append(append([]string{"-upgrades", "1", "-interval", "10ms", "-c", "1", "-mode", "keepalive"}, tt.flags...), args...)...)
			if code != exitServer {
				t.Errorf("exit %d, want %d", code, exitServer)
			}
			for _, want := range tt.want {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q", want)
				}
			}
		})
	}
}

// TestCheckUnderNohup runs "nohup tableflip check", in which SIGHUP is
// ignored: the server still starts with SIGHUP at its default, as a
// service manager starts it, so one without a handler is reported as
// killed by it, not as ignoring it.
func TestCheckUnderNohup(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	nohup, err := exec.LookPath("nohup")
	if err != nil {
		t.Fatalf("nohup (coreutils) is needed: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args, _, _ := helperServer(t, "no-handler")
	cmd := exec.Command(nohup, append([]string{exe, "check", "-log", filepath.Join(t.TempDir(), "server.log"),
		"-upgrades", "1", "-interval", "10ms", "-c", "1", "-mode", "keepalive"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	code := -1
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	if want := "was killed by SIGHUP: the server does not handle that signal"; code != exitServer || !strings.Contains(stderr.String(), want) {
		t.Errorf("nohup tableflip check: %v, want exit %d with %q in stderr; stderr:\n%s", err, exitServer, want, stderr.String())
	}
}

func TestCheckNotExecutable(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	dir := t.TempDir()
	notExec := filepath.Join(dir, "server")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, argv0 := range map[string]string{
		"not executable": notExec,
		"missing":        filepath.Join(dir, "nothing-here"),
		"directory":      dir,
		"not in PATH":    "no-such-server-anywhere",
	} {
		t.Run(name, func(t *testing.T) {
			code, _, stderr := runCheckCmd(t, "-url", "http://127.0.0.1:1/", "-pidfile", filepath.Join(dir, "pid"), "--", argv0)
			if code != exitServer || !strings.Contains(stderr, "cannot start "+argv0) {
				t.Errorf("exit %d, stderr %q; want %d and cannot start", code, stderr, exitServer)
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--", "./server"},
		{"-url", "http://127.0.0.1:8080/"},
		{"-url", "http://192.0.2.1:8080/", "-pidfile", "p", "--", "./server"},
		{"-url", "http://127.0.0.1:8080/", "-pidfile", "p", "-mode", "h2", "--", "./server"},
		{"-mode", "smoke-signals"},
		{"-upgrades", "0"},
		{"-signal", "NOPE"},
		{"-no-such-flag"},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"check"}, args...), &out, &errb); code != exitUsage {
			t.Errorf("check %q: exit %d, want %d; stderr %q", args, code, exitUsage, errb.String())
		}
	}
}

func TestReadPIDFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pid")
	if _, ok := readPIDFile(p); ok {
		t.Error("missing file read as a PID")
	}
	for content, want := range map[string]int{"123\n": 123, "": 0, "x": 0, "-5": 0, " 42 ": 42} {
		os.WriteFile(p, []byte(content), 0o644)
		got, ok := readPIDFile(p)
		if got != want && ok || ok != (want > 0) {
			t.Errorf("readPIDFile(%q) = %d, %v; want %d", content, got, ok, want)
		}
	}
}

func TestFailureKindsOrder(t *testing.T) {
	got := failureKinds(map[string]int{"reset": 1, "eof": 2, "ok": 0})
	var names []string
	for _, o := range got {
		names = append(names, o.String())
	}
	if !sort.StringsAreSorted([]string{"eof", "reset"}) || strings.Join(names, ",") != "eof,reset" {
		t.Errorf("failureKinds = %v", names)
	}
}

func TestCheckDuration(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	code, stdout, _ := runCheckCmd(t, "-duration", "50ms", "-interval", "10ms", "-c", "1", "-mode", "newconn", "-json")
	if code != exitOK {
		t.Fatalf("exit %d, want %d", code, exitOK)
	}
	var rep report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Upgrades) == 0 || rep.UpgradesWanted != 0 {
		t.Errorf("%d upgrades (wanted %d), want some and no fixed number", len(rep.Upgrades), rep.UpgradesWanted)
	}
}

// cancelWriter cancels a context once something containing mark is
// written to it.
type cancelWriter struct {
	mark   string
	cancel context.CancelFunc
	buf    bytes.Buffer
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.mark) {
		w.cancel()
	}
	return len(p), nil
}

func TestCheckInterrupted(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no upgrades on windows")
	}
	cfg, err := parseCheckFlags([]string{"-upgrades", "1000", "-interval", "10ms", "-c", "1", "-mode", "keepalive"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Interrupt in the middle: after the second upgrade.
	w := &cancelWriter{mark: "upgrade 2:", cancel: cancel}
	rep, err := runCheck(ctx, cfg, newProgress(w))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("runCheck = %v, want context.Canceled", err)
	}
	if rep == nil || len(rep.Upgrades) < 2 {
		t.Errorf("report %+v, want one with the upgrades done", rep)
	}
	if left := proctree.Descendants(os.Getpid()); len(left) > 0 {
		t.Errorf("processes left behind: %+v", left)
	}
}
