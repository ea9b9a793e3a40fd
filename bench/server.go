//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The environment a generation of the sample server runs with. The runner
// sets it for the first generation; every later one inherits it from its
// parent, whatever the implementation.
const (
	envImpl  = "BENCH_IMPL"  // ours, tableflip or floor
	envChain = "BENCH_CHAIN" // the runner's name for the chain of generations
	envCtl   = "BENCH_CTL"   // the runner's control socket
	envIP    = "BENCH_IP"    // loopback address to listen on
	envPorts = "BENCH_PORTS" // comma-separated ports: the HTTP one, then the idle ones
	envProf  = "BENCH_PROF"  // directory for CPU profiles (SIGUSR1 starts one, SIGUSR2 writes it)
)

// Implementations, in the order reports show them.
const (
	implOurs      = "ours"
	implTableflip = "tableflip"
	implFloor     = "floor"
)

var impls = []string{implOurs, implTableflip, implFloor}

// Timeouts every implementation gets alike.
const (
	upgradeTimeout = 10 * time.Second
	drainTimeout   = 10 * time.Second
)

// serverConfig is what a generation reads from its environment.
type serverConfig struct {
	impl  string
	chain string
	ctl   string
	addrs []string // addrs[0] serves HTTP; the rest only listen
}

func loadServerConfig() (*serverConfig, error) {
	c := &serverConfig{
		impl:  os.Getenv(envImpl),
		chain: os.Getenv(envChain),
		ctl:   os.Getenv(envCtl),
	}
	ip := os.Getenv(envIP)
	for _, p := range strings.Split(os.Getenv(envPorts), ",") {
		if _, err := strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("bad %s: %q", envPorts, p)
		}
		c.addrs = append(c.addrs, net.JoinHostPort(ip, p))
	}
	if c.ctl == "" || c.chain == "" || ip == "" {
		return nil, errors.New("missing " + envCtl + ", " + envChain + " or " + envIP)
	}
	return c, nil
}

// runServer runs one generation of the sample server and returns its exit
// code.
func runServer() int {
	cfg, err := loadServerConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench server:", err)
		return 2
	}
	switch cfg.impl {
	case implOurs:
		err = serveOurs(cfg)
	case implTableflip:
		err = serveTableflip(cfg)
	case implFloor:
		err = serveFloor(cfg)
	default:
		err = fmt.Errorf("unknown %s %q", envImpl, cfg.impl)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench server %s pid %d: %v\n", cfg.impl, os.Getpid(), err)
		return 1
	}
	return 0
}

// handler is the whole application: it reads the body and answers with
// the pid, so that a client can tell the generations apart.
func handler() http.Handler {
	pid := strconv.Itoa(os.Getpid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Pid", pid)
		fmt.Fprintf(w, "hello from pid %s, read %d bytes\n", pid, n)
	})
}

// control is a generation's line to the runner. Once ready, the
// generation says hello on it; on SIGHUP it runs an upgrade and reports
// how long the upgrade call took. When the runner goes away the
// generation exits at once, so that nothing outlives a killed runner.
type control struct {
	// mu is held while an upgrade runs and is reported, so that close
	// waits for the report of the upgrade that ends this generation.
	mu      sync.Mutex
	conn    net.Conn
	sigs    chan os.Signal
	closing atomic.Bool
}

// dialControl connects to the runner and handles signals (see
// handleSignals). Call it once the generation is ready: the hello it sends
// is the runner's sign of readiness, and the runner may send SIGHUP as
// soon as it has it.
func dialControl(cfg *serverConfig, prepare, upgrade func() error, stop func()) (*control, error) {
	conn, err := net.Dial("unix", cfg.ctl)
	if err != nil {
		return nil, err
	}
	c := &control{conn: conn}
	c.handleSignals(prepare, upgrade, stop)
	if _, err := fmt.Fprintf(conn, "hello %s %d\n", cfg.chain, os.Getpid()); err != nil {
		c.close()
		return nil, err
	}
	go func() {
		// The runner never writes; end of file means it is gone.
		_, _ = io.Copy(io.Discard, conn)
		if !c.closing.Load() {
			os.Exit(3)
		}
	}()
	return c, nil
}

// handleSignals upgrades on SIGHUP, as the tableflip README does, and
// calls stop on SIGTERM or SIGINT. The time measured is the same for every
// implementation: from just before the call that starts the new
// generation to its return, which is when this process has learnt that
// the new generation is ready. It is reported to the runner as
// "upgrade ok <nanoseconds>" or "upgrade err <message>".
//
// prepare, if not nil, runs first and is not timed: both libraries refuse
// to upgrade until they have seen their own parent exit, which they learn
// a moment after the runner has reaped it.
func (c *control) handleSignals(prepare, upgrade func() error, stop func()) {
	c.sigs = make(chan os.Signal, 1)
	signal.Notify(c.sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var prof *os.File
		for sig := range c.sigs {
			switch sig {
			case syscall.SIGUSR1:
				prof = c.startProfile()
				continue
			case syscall.SIGUSR2:
				c.stopProfile(prof)
				prof = nil
				continue
			case syscall.SIGTERM, syscall.SIGINT:
				stop()
				return
			}
			c.mu.Lock()
			var err error
			if prepare != nil {
				err = prepare()
			}
			start := time.Now()
			if err == nil {
				err = upgrade()
			}
			took := time.Since(start)
			if err != nil {
				msg := strings.ReplaceAll(err.Error(), "\n", " ")
				fmt.Fprintf(c.conn, "upgrade err %s\n", msg)
			} else {
				fmt.Fprintf(c.conn, "upgrade ok %d\n", took.Nanoseconds())
			}
			c.mu.Unlock()
		}
	}()
}

// startProfile starts a CPU profile in the directory the runner named.
func (c *control) startProfile() *os.File {
	dir := os.Getenv(envProf)
	if dir == "" {
		return nil
	}
	f, err := os.Create(filepath.Join(dir, strconv.Itoa(os.Getpid())+".prof"))
	if err != nil {
		fmt.Fprintf(c.conn, "profile err %v\n", err)
		return nil
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		fmt.Fprintf(c.conn, "profile err %v\n", err)
		return nil
	}
	return f
}

// stopProfile writes the profile and tells the runner where it is.
func (c *control) stopProfile(f *os.File) {
	if f == nil {
		fmt.Fprintf(c.conn, "profile err no profile running\n")
		return
	}
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		fmt.Fprintf(c.conn, "profile err %v\n", err)
		return
	}
	fmt.Fprintf(c.conn, "profile ok %s\n", f.Name())
}

// waitForParent is the prepare step of the two libraries.
func waitForParent(wait func(context.Context) error) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), upgradeTimeout)
		defer cancel()
		return wait(ctx)
	}
}

func (c *control) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing.Store(true)
	if c.sigs != nil {
		signal.Stop(c.sigs)
	}
	c.conn.Close()
}
