//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hub is the runner's control socket. Every generation of every chain
// connects to it once ready and says hello; the hub hands the connection
// to the chain it names.
type hub struct {
	path  string
	ln    net.Listener
	procs *procs
	exe   string
	dir   string

	mu     sync.Mutex
	chains map[string]*chain
	next   int

	// refusals counts tableflip's "parent hasn't exited" after its
	// WaitForParent returned: see chain.upgrade.
	refusals atomic.Int64
}

func newHub(dir string, p *procs) (*hub, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "ctl.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	h := &hub{path: path, ln: ln, procs: p, exe: exe, dir: dir, chains: map[string]*chain{}}
	go h.accept()
	return h, nil
}

func (h *hub) close() { h.ln.Close() }

func (h *hub) accept() {
	for {
		conn, err := h.ln.Accept()
		if err != nil {
			return
		}
		go h.hello(conn)
	}
}

// gen is one generation as the runner sees it.
type gen struct {
	pid   int
	conn  net.Conn
	lines chan string // closed at end of file
	seen  time.Time   // when its hello arrived
}

func (h *hub) hello(conn net.Conn) {
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := br.ReadString('\n')
	conn.SetReadDeadline(time.Time{})
	f := strings.Fields(line)
	if err != nil || len(f) != 3 || f[0] != "hello" {
		conn.Close()
		return
	}
	pid, _ := strconv.Atoi(f[2])
	h.mu.Lock()
	c := h.chains[f[1]]
	h.mu.Unlock()
	if c == nil || pid <= 0 {
		conn.Close()
		return
	}
	g := &gen{pid: pid, conn: conn, lines: make(chan string, 4), seen: time.Now()}
	go func() {
		defer close(g.lines)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			g.lines <- strings.TrimSuffix(line, "\n")
		}
	}()
	c.hellos <- g
}

// chain is the line of generations of one implementation, serving one
// set of ports.
type chain struct {
	h      *hub
	impl   string
	id     string
	ip     string
	ports  []int
	hellos chan *gen
	log    *os.File

	cur      *gen
	gens     int // generations started, the first included
	firstPID int
}

// upgradeResult is one upgrade as measured.
type upgradeResult struct {
	// Ready is what the old generation measured: from the call that
	// starts the upgrade to its return with the new generation ready.
	Ready time.Duration
	// Seen is the runner's view: from sending SIGHUP until the old
	// generation's report arrived.
	Seen time.Duration
	// Exit is from the report until the old generation was reaped.
	Exit time.Duration
}

// startChain starts the first generation of impl, listening on ip on the
// given ports (the first serves HTTP).
func (h *hub) startChain(ctx context.Context, impl, ip string, ports []int) (*chain, error) {
	h.mu.Lock()
	h.next++
	id := fmt.Sprintf("%s-%d", impl, h.next)
	c := &chain{h: h, impl: impl, id: id, ip: ip, ports: ports, hellos: make(chan *gen, 4)}
	h.chains[id] = c
	h.mu.Unlock()

	log, err := os.Create(filepath.Join(h.dir, id+".log"))
	if err != nil {
		return nil, err
	}
	c.log = log
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	env := append(os.Environ(),
		envRole+"=server",
		envImpl+"="+impl,
		envChain+"="+id,
		envCtl+"="+h.path,
		envIP+"="+ip,
		envPorts+"="+strings.Join(ps, ","),
		envProf+"="+h.dir,
	)
	pid, err := h.procs.start([]string{h.exe}, env, log, log)
	if err != nil {
		return nil, err
	}
	c.firstPID = pid
	c.gens = 1
	exited, status := h.procs.wait(pid)
	select {
	case g := <-c.hellos:
		c.cur = g
		return c, nil
	case <-exited:
		return nil, fmt.Errorf("%s: first generation exited (%s): %s", id, waitString(status()), c.tail())
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("%s: first generation not ready after a minute: %s", id, c.tail())
	}
}

// URL is the chain's HTTP address.
func (c *chain) URL() string {
	return "http://" + net.JoinHostPort(c.ip, strconv.Itoa(c.ports[0])) + "/"
}

// upgrade upgrades the chain once and waits until the old generation has
// been reaped, so that the next upgrade finds the chain at rest.
func (c *chain) upgrade(ctx context.Context) (upgradeResult, error) {
	var r upgradeResult
	old := c.cur
	exited, status := c.h.procs.wait(old.pid)
	start := time.Now()
	if err := unix.Kill(old.pid, unix.SIGHUP); err != nil {
		return r, fmt.Errorf("%s: SIGHUP to %d: %w", c.id, old.pid, err)
	}
	timeout := time.NewTimer(upgradeTimeout + 5*time.Second)
	defer timeout.Stop()
	var reported time.Time
	var next *gen
	retries := 0
	lines := old.lines // nil once the report is in: the old one exits next
	for reported.IsZero() || next == nil {
		select {
		case line, ok := <-lines:
			if !ok {
				st := "still running"
				select {
				case <-exited:
					st = waitString(status())
				case <-time.After(time.Second):
				}
				return r, fmt.Errorf("%s: generation %d went away during the upgrade (%s): %s", c.id, old.pid, st, c.tail())
			}
			f := strings.SplitN(line, " ", 3)
			if len(f) < 3 || f[0] != "upgrade" {
				continue
			}
			if f[1] != "ok" && c.impl == implTableflip && strings.Contains(f[2], "parent hasn't exited") && retries < 100 {
				// cloudflare/tableflip's run loop can learn of the
				// parent's exit after its WaitForParent returned, and
				// refuses meanwhile: ask again.
				retries++
				c.h.refusals.Add(1)
				if err := unix.Kill(old.pid, unix.SIGHUP); err != nil {
					return r, fmt.Errorf("%s: SIGHUP to %d: %w", c.id, old.pid, err)
				}
				continue
			}
			if f[1] != "ok" {
				return r, fmt.Errorf("%s: upgrade of %d failed: %s", c.id, old.pid, f[2])
			}
			ns, _ := strconv.ParseInt(f[2], 10, 64)
			r.Ready = time.Duration(ns)
			reported = time.Now()
			r.Seen = reported.Sub(start)
			lines = nil
		case g := <-c.hellos:
			next = g
		case <-timeout.C:
			return r, fmt.Errorf("%s: upgrade of %d: no answer: %s", c.id, old.pid, c.tail())
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	c.cur = next
	c.gens++
	select {
	case <-exited:
		r.Exit = time.Since(reported)
	case <-time.After(drainTimeout + 5*time.Second):
		return r, fmt.Errorf("%s: old generation %d did not exit: %s", c.id, old.pid, c.tail())
	case <-ctx.Done():
		return r, ctx.Err()
	}
	old.conn.Close()
	return r, nil
}

// profile takes a CPU profile of the serving generation for d and returns
// the file it is in.
func (c *chain) profile(ctx context.Context, d time.Duration) (string, error) {
	g := c.cur
	if err := unix.Kill(g.pid, unix.SIGUSR1); err != nil {
		return "", err
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	if err := unix.Kill(g.pid, unix.SIGUSR2); err != nil {
		return "", err
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-g.lines:
			if !ok {
				return "", fmt.Errorf("%s: generation %d went away while profiling", c.id, g.pid)
			}
			f := strings.SplitN(line, " ", 3)
			if len(f) < 3 || f[0] != "profile" {
				continue
			}
			if f[1] != "ok" {
				return "", fmt.Errorf("%s: profile: %s", c.id, f[2])
			}
			return f[2], nil
		case <-timeout:
			return "", fmt.Errorf("%s: no profile from %d", c.id, g.pid)
		}
	}
}

// stop stops the serving generation and waits for it.
func (c *chain) stop() {
	if c.cur == nil {
		return
	}
	exited, _ := c.h.procs.wait(c.cur.pid)
	_ = unix.Kill(c.cur.pid, unix.SIGTERM)
	select {
	case <-exited:
	case <-time.After(drainTimeout + 2*time.Second):
		_ = unix.Kill(c.cur.pid, unix.SIGKILL)
		<-exited
	}
	c.cur.conn.Close()
	c.cur = nil
	c.log.Close()
	c.h.mu.Lock()
	delete(c.h.chains, c.id)
	c.h.mu.Unlock()
}

// tail returns the end of the chain's log, for error messages.
func (c *chain) tail() string {
	b, _ := os.ReadFile(c.log.Name())
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(log empty)"
	}
	return "log: " + s
}

func waitString(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// pickPorts finds n free TCP ports on ip below the ephemeral range, so
// that the load's client sockets never take one between two generations.
func pickPorts(ip string, n int) ([]int, error) {
	ports := make([]int, 0, n)
	for p := 10000; p < 32768 && len(ports) < n; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		ports = append(ports, p)
	}
	if len(ports) < n {
		return nil, errors.New("not enough free ports on " + ip)
	}
	return ports, nil
}
