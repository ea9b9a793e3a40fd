//go:build unix

package drain_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/drain"
	"github.com/seed589fcc9d/tableflip/drain/internal/load"
)

// The real-process test: the test binary re-executes itself as each new
// generation of a server (TestMain dispatches on envGeneration), hands
// it the listening sockets, waits until it is ready, and only then tells
// the old generation to stop, the way an upgrade does. Clients of every
// load.Mode run throughout.
const (
	envGeneration = "DRAIN_TEST_GENERATION" // how the generation stops: "drain" or "shutdown"
	envCert       = "DRAIN_TEST_CERT"
	envKey        = "DRAIN_TEST_KEY"

	// Inherited files, in exec.Cmd.ExtraFiles order: entry i is fd 3+i.
	fdPlain = 3 // HTTP/1.1 listener
	fdTLS   = 4 // HTTPS listener, HTTP/2 and HTTP/1.1
	fdReady = 5 // write end of a pipe: one byte means ready

	upgrades   = 20
	clients    = 16                     // per mode
	idleGrace  = 250 * time.Millisecond // the generation's Options.IdleGrace
	drainLimit = 15 * time.Second       // the generation's drain deadline
)

func TestMain(m *testing.M) {
	if how := os.Getenv(envGeneration); how != "" {
		os.Exit(runGeneration(how))
	}
	os.Exit(m.Run())
}

// generationReport is what a generation prints on stdout when it exits.
type generationReport struct {
	Plain, TLS drain.Stats
	Errors     []string
}

// runGeneration is the server: it serves the inherited listeners, says
// it is ready, and stops on SIGTERM, either with drain or with a bare
// http.Server.Shutdown.
func runGeneration(how string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "generation:", err)
		return 2
	}
	lns := make([]net.Listener, 2)
	for i, fd := range []uintptr{fdPlain, fdTLS} {
		f := os.NewFile(fd, "listener")
		ln, err := net.FileListener(f) // a dup; f is not needed after
		f.Close()
		if err != nil {
			return fail(err)
		}
		lns[i] = ln
	}
	ready := os.NewFile(fdReady, "ready")
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM)

	plain := &http.Server{Handler: load.Handler()}
	secure := &http.Server{Handler: load.Handler()}
	certFile, keyFile := os.Getenv(envCert), os.Getenv(envKey)
	var stop func(context.Context) generationReport
	switch how {
	case "drain":
		opts := drain.Options{IdleGrace: idleGrace}
		dp, ds := drain.NewServer(plain, opts), drain.NewServer(secure, opts)
		go dp.Serve(lns[0])
		go ds.ServeTLS(lns[1], certFile, keyFile)
		stop = func(ctx context.Context) (r generationReport) {
			var wg sync.WaitGroup
			var errP, errS error
			wg.Add(2)
			go func() { defer wg.Done(); r.Plain, errP = dp.Drain(ctx) }()
			go func() { defer wg.Done(); r.TLS, errS = ds.Drain(ctx) }()
			wg.Wait()
			for _, err := range []error{errP, errS} {
				if err != nil {
					r.Errors = append(r.Errors, err.Error())
				}
			}
			return r
		}
	case "shutdown":
		go plain.Serve(lns[0])
		go secure.ServeTLS(lns[1], certFile, keyFile)
		stop = func(ctx context.Context) (r generationReport) {
			for _, srv := range []*http.Server{plain, secure} {
				if err := srv.Shutdown(ctx); err != nil {
					r.Errors = append(r.Errors, err.Error())
				}
			}
			return r
		}
	default:
		return fail(fmt.Errorf("unknown %s %q", envGeneration, how))
	}

	if _, err := ready.Write([]byte{1}); err != nil {
		return fail(err)
	}
	ready.Close()
	<-sigc
	ctx, cancel := context.WithTimeout(context.Background(), drainLimit)
	defer cancel()
	if err := json.NewEncoder(os.Stdout).Encode(stop(ctx)); err != nil {
		return fail(err)
	}
	return 0
}

type generation struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	exited chan error // after stop
}

// startGeneration starts the next generation on the sockets in files and
// waits until it is ready.
func startGeneration(t *testing.T, how string, files []*os.File, certFile, keyFile string) *generation {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g := &generation{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	g.cmd.Env = append(os.Environ(), envGeneration+"="+how, envCert+"="+certFile, envKey+"="+keyFile)
	g.cmd.ExtraFiles = append(append([]*os.File(nil), files...), w)
	g.cmd.Stdout, g.cmd.Stderr = &g.stdout, &g.stderr
	err = g.cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	r.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		g.cmd.Process.Kill()
		g.cmd.Wait()
		t.Fatalf("generation not ready: %v; stderr:\n%s", err, g.stderr.String())
	}
	return g
}

// stop sends SIGTERM: the generation drains and exits in the
// background while the next upgrade goes on, as a real old generation
// does.
func (g *generation) stop(t *testing.T) {
	t.Helper()
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	g.exited = make(chan error, 1)
	go func() { g.exited <- g.cmd.Wait() }()
}

// report waits for a stopped generation to exit and returns its report.
func (g *generation) report(t *testing.T) generationReport {
	t.Helper()
	var err error
	select {
	case err = <-g.exited:
	case <-time.After(drainLimit + wait):
		g.cmd.Process.Kill()
		<-g.exited
		t.Fatalf("generation did not exit; stderr:\n%s", g.stderr.String())
	}
	if err != nil {
		t.Fatalf("generation: %v; stderr:\n%s", err, g.stderr.String())
	}
	var rep generationReport
	if err := json.Unmarshal(g.stdout.Bytes(), &rep); err != nil {
		t.Fatalf("generation report %q: %v", g.stdout.String(), err)
	}
	return rep
}

// listenerFile returns a new descriptor for ln's socket, to pass to a
// child process.
//
// Not ln.File(): that *os.File is marked as having been non-blocking,
// so its Fd method, which exec.Cmd calls on every ExtraFiles entry, puts
// the socket into blocking mode. The mode belongs to the socket, shared
// by every process holding it: the running generation's accept would
// then block inside the kernel, and closing its listener could no longer
// stop it from taking the next connection. A descriptor given to
// os.NewFile keeps its mode when Fd is called.
func listenerFile(t *testing.T, ln net.Listener) *os.File {
	t.Helper()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		nfd  int
		derr error
	)
	err = rc.Control(func(fd uintptr) {
		// Under ForkLock so that no child started meanwhile inherits the
		// descriptor before it is close-on-exec.
		syscall.ForkLock.RLock()
		defer syscall.ForkLock.RUnlock()
		if nfd, derr = syscall.Dup(int(fd)); derr == nil {
			syscall.CloseOnExec(nfd)
		}
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(nfd), "listener")
	t.Cleanup(func() { f.Close() })
	return f
}

// waitProgress waits until every run has sent at least min more requests
// than in last, and updates last.
func waitProgress(t *testing.T, runs []*load.Run, last []int64, min int64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i, r := range runs {
		for r.Requests() < last[i]+min {
			if time.Now().After(deadline) {
				t.Fatalf("%v clients made no progress", load.Modes[i])
			}
			<-tick.C
		}
		last[i] = r.Requests()
	}
}

// upgradeUnderLoad upgrades a real server the given number of times
// while clients of every mode run, stopping each old generation as how
// says, and returns what the clients saw and what the generations
// reported.
func upgradeUnderLoad(t *testing.T, how string) ([]load.Result, []generationReport) {
	dir := t.TempDir()
	certFile, keyFile, clientTLS, err := load.Cert(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	var addrs []string
	for range 2 {
		// The test holds the sockets the way an Upgrader's parent and
		// child do; it never accepts on them.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		files = append(files, listenerFile(t, ln))
		addrs = append(addrs, ln.Addr().String())
	}

	g := startGeneration(t, how, files, certFile, keyFile)
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	runs := make([]*load.Run, len(load.Modes))
	for i, m := range load.Modes {
		addr := addrs[0]
		if m == load.HTTP2 {
			addr = addrs[1]
		}
		runs[i] = load.Start(ctx, load.Config{Mode: m, Addr: addr, Clients: clients, TLS: clientTLS.Clone()})
	}
	results := func() []load.Result {
		stopLoad()
		res := make([]load.Result, len(runs))
		for i, r := range runs {
			res[i] = r.Wait()
		}
		return res
	}

	last := make([]int64, len(runs))
	var old []*generation
	defer func() {
		for _, g := range old {
			g.cmd.Process.Kill() // only if the test failed half-way
		}
	}()
	for range upgrades {
		waitProgress(t, runs, last, 4*clients)
		next := startGeneration(t, how, files, certFile, keyFile)
		g.stop(t)
		old = append(old, g)
		g = next
	}
	waitProgress(t, runs, last, 4*clients)
	res := results() // before the last generation stops: that is no upgrade
	g.stop(t)
	old = append(old, g)
	var reports []generationReport
	for _, g := range old {
		reports = append(reports, g.report(t))
	}
	old = nil
	return res, reports
}

func logResults(t *testing.T, res []load.Result) {
	t.Helper()
	for _, r := range res {
		t.Logf("%-9v %6d requests, %4d failed", r.Mode, r.Requests, r.Failures)
		for _, e := range r.Errors {
			t.Logf("%-9v   %s", r.Mode, e)
		}
	}
}

// Drained generations lose no request in any client mode.
func TestUpgradeUnderLoadDrain(t *testing.T) {
	res, reports := upgradeUnderLoad(t, "drain")
	logResults(t, res)
	for _, r := range res {
		if r.Failures != 0 {
			t.Errorf("%v: %d of %d requests failed", r.Mode, r.Failures, r.Requests)
		}
	}
	for i, rep := range reports[:len(reports)-1] {
		if len(rep.Errors) > 0 || rep.Plain.Cut()+rep.TLS.Cut() > 0 {
			t.Errorf("generation %d: drain cut %+v %+v: %v", i+1, rep.Plain, rep.TLS, rep.Errors)
		}
	}
}

// The same upgrades with a bare http.Server.Shutdown lose requests: the
// clients above can see a loss. Keep-alive clients that do not retry lose
// about one request per connection per upgrade (Shutdown closes
// connections after a response that did not say "Connection: close"),
// far too many to miss by luck.
func TestUpgradeUnderLoadShutdownLoses(t *testing.T) {
	res, _ := upgradeUnderLoad(t, "shutdown")
	logResults(t, res)
	if res[load.KeepAlive].Failures == 0 {
		t.Errorf("bare Shutdown lost no keep-alive request in %d upgrades: the test cannot see losses", upgrades)
	}
}
