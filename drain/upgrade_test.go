//go:build unix

package drain_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// The real-process test: the test binary re-executes itself as the first
// generation of a server (TestMain dispatches on envGeneration), which
// uses tableflip's Upgrader the way a program does: Listen, Ready, an
// Upgrade on SIGHUP, and on Exit a drain (or, for comparison, a bare
// http.Server.Shutdown). Each Upgrade starts the next generation from the
// same binary. Clients of every loadgen mode run throughout, sending GETs
// and POSTs with a body, and never retry (but for net/http's own client).
//
// The generations report to the test over a Unix socket (envReport): one
// connection each, one JSON message per event, and the end of file that
// the generation's exit brings.
const (
	envGeneration = "DRAIN_TEST_GENERATION" // how a generation stops: "drain" or "shutdown"
	envReport     = "DRAIN_TEST_REPORT"
	envCert       = "DRAIN_TEST_CERT"
	envKey        = "DRAIN_TEST_KEY"

	upgrades   = 20
	clients    = 8                      // per mode and method
	idleGrace  = 250 * time.Millisecond // the generations' Options.IdleGrace
	drainLimit = 15 * time.Second       // the generations' drain deadline
	postSize   = 512
)

func TestMain(m *testing.M) {
	if how := os.Getenv(envGeneration); strings.HasPrefix(how, "packet-") {
		os.Exit(runPacketGeneration(how))
	} else if how != "" {
		os.Exit(runGeneration(how))
	}
	os.Exit(m.Run())
}

// postBody is what every POST sends; the server checks that it got all of
// it, unchanged.
var postBody = bytes.Repeat([]byte("0123456789abcdef"), postSize/16)

func handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
		case r.Method == http.MethodPost && !bytes.Equal(body, postBody):
			http.Error(w, fmt.Sprintf("POST body of %d bytes is not the one sent", len(body)), http.StatusBadRequest)
		case r.Method == http.MethodGet && len(body) != 0:
			http.Error(w, "GET with a body", http.StatusBadRequest)
		default:
			io.WriteString(w, r.Method+" ok")
		}
	})
}

// message is one event of a generation, sent to the test.
type message struct {
	Event string // "ready", "upgrade", "exit" or "error"
	Err   string `json:",omitempty"`
	PID   int    `json:",omitempty"`
	// Ready: the addresses of the HTTP and the HTTPS listener.
	Addrs []string `json:",omitempty"`
	// Exit: what the drain of each listener's server did, and what went
	// wrong in the drain (or Shutdown) or in Serve.
	Stats  []drain.Stats `json:",omitempty"`
	Errors []string      `json:",omitempty"`
}

// genProgram is what every generation does before it serves: it reports
// to the test, creates the Upgrader, and upgrades on SIGHUP and stops for
// good on SIGTERM.
type genProgram struct {
	upg  *tableflip.Upgrader
	log  *slog.Logger
	send func(message)
	// settled is closed once the generation has reported its
	// successful upgrade, or was told to stop: its exit report, which
	// the test reads after the upgrade's, may follow.
	settled chan struct{}
}

// fail reports err and returns the generation's exit status.
func (g *genProgram) fail(err error) int {
	g.send(message{Event: "error", Err: err.Error()})
	fmt.Fprintf(os.Stderr, "generation %d: %v\n", os.Getpid(), err)
	return 2
}

// startGeneration returns the generation's program, or nil and the exit
// status if it cannot start. The caller stops the Upgrader.
func startGeneration() (*genProgram, int) {
	// The connection is closed by the exit of this process, not before:
	// its end of file tells the test that this generation is gone. It is
	// close-on-exec, so the next generation does not inherit it.
	rep, err := net.Dial("unix", os.Getenv(envReport))
	if err != nil {
		fmt.Fprintln(os.Stderr, "generation:", err)
		return nil, 2
	}
	var mu sync.Mutex
	enc := json.NewEncoder(rep)
	g := &genProgram{
		settled: make(chan struct{}),
		log:     slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid()),
		send: func(m message) {
			mu.Lock()
			defer mu.Unlock()
			if err := enc.Encode(m); err != nil {
				fmt.Fprintln(os.Stderr, "generation: report:", err)
			}
		},
	}
	if g.upg, err = tableflip.New(tableflip.Options{Logger: g.log}); err != nil {
		return nil, g.fail(err)
	}

	// SIGHUP upgrades, SIGTERM stops for good.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGHUP, syscall.SIGTERM)
	go func() {
		for sig := range sigc {
			if sig == syscall.SIGTERM {
				g.upg.Stop()
				close(g.settled)
				return
			}
			// The Upgrader refuses to upgrade while the previous
			// generation is still draining (ErrParentRunning).
			err := g.upg.WaitForParent(context.Background())
			if err == nil {
				err = g.upg.Upgrade()
			}
			m := message{Event: "upgrade"}
			if err != nil {
				m.Err = err.Error()
			}
			g.send(m)
			if err == nil {
				close(g.settled)
				return
			}
		}
	}()
	return g, 0
}

// runGeneration is the HTTP server program.
func runGeneration(how string) int {
	g, code := startGeneration()
	if g == nil {
		return code
	}
	upg, logger, send, fail := g.upg, g.log, g.send, g.fail
	defer upg.Stop()

	// The Upgrader finds an inherited listener by the network and address
	// it was asked for (or by the address it is bound to), so two
	// listeners on ephemeral ports must be asked for by different names.
	plainLn, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	tlsLn, err := upg.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	plain := &http.Server{Handler: handler()}
	secure := &http.Server{Handler: handler()}
	certFile, keyFile := os.Getenv(envCert), os.Getenv(envKey)
	served := make(chan error, 2)
	var stop func(context.Context) message
	switch how {
	case "drain":
		opts := drain.Options{IdleGrace: idleGrace, Logger: logger}
		dp, ds := drain.NewServer(plain, opts), drain.NewServer(secure, opts)
		go func() { served <- dp.Serve(plainLn) }()
		go func() { served <- ds.ServeTLS(tlsLn, certFile, keyFile) }()
		stop = func(ctx context.Context) (m message) {
			m.Stats = make([]drain.Stats, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i, s := range []*drain.Server{dp, ds} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					m.Stats[i], errs[i] = s.Drain(ctx)
				}()
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					m.Errors = append(m.Errors, "drain: "+err.Error())
				}
			}
			return m
		}
	case "shutdown":
		go func() { served <- plain.Serve(plainLn) }()
		go func() { served <- secure.ServeTLS(tlsLn, certFile, keyFile) }()
		stop = func(ctx context.Context) (m message) {
			for _, srv := range []*http.Server{plain, secure} {
				if err := srv.Shutdown(ctx); err != nil {
					m.Errors = append(m.Errors, "shutdown: "+err.Error())
				}
			}
			return m
		}
	default:
		return fail(fmt.Errorf("unknown %s %q", envGeneration, how))
	}

	if err := upg.Ready(); err != nil {
		return fail(err)
	}
	send(message{Event: "ready", PID: os.Getpid(), Addrs: []string{plainLn.Addr().String(), tlsLn.Addr().String()}})
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), drainLimit)
	defer cancel()
	m := stop(ctx)
	m.Event = "exit"
	for range 2 {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			m.Errors = append(m.Errors, fmt.Sprintf("serve: %v", err))
		}
	}
	<-g.settled // the upgrade report comes first
	send(m)
	return 0
}

// generation is the test's view of one generation.
type generation struct {
	pid   int
	addrs []string
	conn  net.Conn
	dec   *json.Decoder
	gone  bool // its report connection has ended
}

// upgradeTest runs generations and reads their reports.
type upgradeTest struct {
	t    *testing.T
	ln   *net.UnixListener
	log  string // the generations' standard error
	gens []*generation
}

func (ut *upgradeTest) fatalf(format string, args ...any) {
	ut.t.Helper()
	out, _ := os.ReadFile(ut.log)
	ut.t.Fatalf(format+"\ngenerations' stderr:\n%s", append(args, out)...)
}

// accept returns the next generation that reports, once it is ready,
// with the addresses of its nAddrs listeners.
func (ut *upgradeTest) accept(nAddrs int) *generation {
	ut.t.Helper()
	ut.ln.SetDeadline(time.Now().Add(wait))
	conn, err := ut.ln.Accept()
	if err != nil {
		ut.fatalf("no new generation: %v", err)
	}
	g := &generation{conn: conn, dec: json.NewDecoder(conn)}
	ut.gens = append(ut.gens, g)
	m := ut.next(g, "ready", wait)
	g.pid, g.addrs = m.PID, m.Addrs
	if len(g.addrs) != nAddrs {
		ut.fatalf("generation %d reported addresses %q", g.pid, g.addrs)
	}
	return g
}

// next reads g's next message, which must be event, within limit.
func (ut *upgradeTest) next(g *generation, event string, limit time.Duration) message {
	ut.t.Helper()
	g.conn.SetReadDeadline(time.Now().Add(limit))
	var m message
	if err := g.dec.Decode(&m); err != nil {
		ut.fatalf("generation %d, waiting for %q: %v", g.pid, event, err)
	}
	if m.Event != event || m.Err != "" {
		ut.fatalf("generation %d: got %q %s, want %q", g.pid, m.Event, m.Err, event)
	}
	return m
}

// exited waits for g's report connection to end, which its exit does.
func (ut *upgradeTest) exited(g *generation) {
	ut.t.Helper()
	g.conn.SetReadDeadline(time.Now().Add(wait))
	var m message
	if err := g.dec.Decode(&m); err != io.EOF {
		ut.fatalf("generation %d after its exit report: %+v, %v", g.pid, m, err)
	}
	g.gone = true
}

// waitProgress waits until every load has finished at least min more
// requests than in last, and updates last.
func waitProgress(t *testing.T, loads []*loadgen.Load, last []int64, min int64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i, l := range loads {
		for l.Counts().Requests < last[i]+min {
			if time.Now().After(deadline) {
				t.Fatalf("load %d made no progress", i)
			}
			<-tick.C
		}
		last[i] = l.Counts().Requests
	}
}

// loadResult is what the clients of one mode and method saw.
type loadResult struct {
	name     string
	mode     loadgen.Mode
	requests int
	failures map[loadgen.Outcome]int
	failed   int
	// afterIdle counts the failed requests sent on a connection that had
	// been idle IdleGrace or longer (the client was not scheduled): the
	// race every HTTP/1.1 server has when it closes an idle connection,
	// which Options.IdleGrace documents. maxIdle is the longest idle
	// time before a failed request.
	afterIdle int
	maxIdle   time.Duration
	examples  map[loadgen.Outcome]string
}

// httpLoads starts clients of every HTTP mode, with GETs and POSTs,
// against a generation's HTTP and HTTPS listeners.
func httpLoads(t *testing.T, ctx context.Context, addrs []string, clientTLS *tls.Config) ([]*loadgen.Load, []loadResult) {
	var (
		loads   []*loadgen.Load
		results []loadResult
	)
	for _, mode := range []loadgen.Mode{loadgen.ModeKeepAlive, loadgen.ModeNewConn, loadgen.ModeGoClient, loadgen.ModeHTTP2} {
		url := "http://" + addrs[0] + "/"
		if mode == loadgen.ModeHTTP2 {
			url = "https://" + addrs[1] + "/"
		}
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			opts := loadgen.Options{
				URL:       url,
				Mode:      mode,
				Conns:     clients,
				Method:    method,
				Duration:  time.Hour, // stopped below
				TLSConfig: clientTLS,
			}
			if method == http.MethodPost {
				opts.Body = postBody
			}
			l, err := loadgen.Start(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			loads = append(loads, l)
			results = append(results, loadResult{name: string(mode) + " " + method, mode: mode})
		}
	}
	return loads, results
}

// upgradeUnderLoad starts an HTTP server and upgrades it n times while
// clients of every mode run, each old generation stopping as how says.
// It returns what the clients saw, each generation's exit report, in
// order, and the name of the file that holds the generations' standard
// error.
func upgradeUnderLoad(t *testing.T, how string, n int) ([]loadResult, []message, string) {
	return upgradeServerUnderLoad(t, how, n, 2, httpLoads)
}

// upgradeServerUnderLoad runs the generations of server how, which
// report nAddrs addresses when ready, and upgrades them n times under the
// loads that startLoads starts against the first one's addresses.
func upgradeServerUnderLoad(t *testing.T, how string, n, nAddrs int,
	startLoads func(t *testing.T, ctx context.Context, addrs []string, clientTLS *tls.Config) ([]*loadgen.Load, []loadResult),
) ([]loadResult, []message, string) {
	dir := t.TempDir()
	certFile, keyFile, clientTLS, err := loadgen.WriteLoopbackCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "report.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	logFile, err := os.Create(filepath.Join(dir, "generations.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	ut := &upgradeTest{t: t, ln: ln, log: logFile.Name()}

	// The first generation is the test's child; the later ones are
	// children of their predecessors, and share its standard streams.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envGeneration+"="+how, envReport+"="+ln.Addr().String(),
		envCert+"="+certFile, envKey+"="+keyFile,
		// Under the race detector a process lingers a second at exit
		// by default, and each upgrade waits for the previous
		// generation's exit. Races are still reported, in the log.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Stderr = logFile // a file, so that Wait does not wait for later generations too
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if waited {
			return
		}
		// The test failed half-way.
		cmd.Process.Kill()
		for _, g := range ut.gens {
			if !g.gone && g.pid > 0 {
				syscall.Kill(g.pid, syscall.SIGKILL)
			}
		}
		cmd.Wait()
	}()
	defer func() {
		for _, g := range ut.gens {
			g.conn.Close()
		}
	}()
	g := ut.accept(nAddrs)
	first := g

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loads, results := startLoads(t, ctx, g.addrs, clientTLS)
	var stopped sync.Once
	stopLoads := func() {
		stopped.Do(func() {
			for i, l := range loads {
				res := l.Stop()
				r := &results[i]
				r.requests, r.failures, r.examples = len(res.Records), res.Failures(), res.Examples
				for _, n := range r.failures {
					r.failed += n
				}
				for _, rec := range res.Records {
					if rec.Outcome != loadgen.OK {
						r.maxIdle = max(r.maxIdle, rec.Idle)
						if rec.Idle >= idleGrace-time.Millisecond {
							r.afterIdle++
						}
					}
				}
			}
		})
	}
	defer stopLoads()

	last := make([]int64, len(loads))
	for range n {
		waitProgress(t, loads, last, 2*clients)
		if err := syscall.Kill(g.pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// Upgrade returns once the next generation is ready. It waits
		// first for the exit of g's parent, whose drain may still run.
		ut.next(g, "upgrade", drainLimit+wait)
		g = ut.accept(nAddrs)
		if fmt.Sprint(g.addrs) != fmt.Sprint(first.addrs) {
			ut.fatalf("generation %d listens on %v, not on the inherited %v", g.pid, g.addrs, first.addrs)
		}
	}
	waitProgress(t, loads, last, 2*clients)
	stopLoads() // before the last generation stops: that is no upgrade
	if err := syscall.Kill(g.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var reports []message
	for _, g := range ut.gens {
		reports = append(reports, ut.next(g, "exit", drainLimit+wait))
		ut.exited(g)
	}
	waited = true
	// Only the first generation's exit status reaches the test; the
	// race detector and the runtime say in the log what went wrong in
	// the others.
	if out, _ := os.ReadFile(ut.log); bytes.Contains(out, []byte("DATA RACE")) || bytes.Contains(out, []byte("panic:")) {
		ut.fatalf("a generation failed")
	}
	if err := cmd.Wait(); err != nil {
		ut.fatalf("first generation: %v", err)
	}
	return results, reports, ut.log
}

func logResults(t *testing.T, res []loadResult) {
	t.Helper()
	for _, r := range res {
		t.Logf("%-13s %6d requests, %4d failed %v (%d after %v idle or more; longest idle before a failure %v)",
			r.name, r.requests, r.failed, r.failures, r.afterIdle, idleGrace, r.maxIdle)
		for o, e := range r.examples {
			t.Logf("%-13s   %v: %s", r.name, o, e)
		}
	}
}

// Drained generations lose no request in any client mode, but for
// requests that a client sends on a connection it left idle for
// IdleGrace or longer (Options.IdleGrace): the drain closes those, and a
// request sent at that moment races with the close. The clients here send
// continuously; only a machine too busy to schedule them for IdleGrace
// leaves a connection that idle.
func TestUpgradeUnderLoadDrain(t *testing.T) {
	res, reports, logFile := upgradeUnderLoad(t, "drain", upgrades)
	logResults(t, res)
	for _, r := range res {
		if r.failed != r.afterIdle || r.requests == 0 {
			t.Errorf("%s: %d of %d requests failed, %d of them on a connection idle less than IdleGrace (%v)",
				r.name, r.failed, r.requests, r.failed-r.afterIdle, idleGrace)
		}
	}
	for i, rep := range reports {
		cut := 0
		for _, st := range rep.Stats {
			cut += st.Cut()
		}
		if len(rep.Errors) > 0 || cut > 0 {
			out, _ := os.ReadFile(logFile)
			t.Errorf("generation %d: drain cut %d: %+v: %v\ngenerations' stderr:\n%s", i+1, cut, rep.Stats, rep.Errors, out)
		}
	}
}

// The same upgrades with a bare http.Server.Shutdown lose requests: the
// clients above can see a loss. Keep-alive clients that do not retry lose
// about one request per connection per upgrade (Shutdown closes
// connections after a response that did not say "Connection: close"),
// far too many to miss by luck.
func TestUpgradeUnderLoadShutdownLoses(t *testing.T) {
	res, _, _ := upgradeUnderLoad(t, "shutdown", upgrades)
	logResults(t, res)
	lost := 0
	for _, r := range res {
		if r.mode == loadgen.ModeKeepAlive {
			lost += r.failed
		}
	}
	if lost == 0 {
		t.Errorf("bare Shutdown lost no keep-alive request in %d upgrades: the test cannot see losses", upgrades)
	}
}
