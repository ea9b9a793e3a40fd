//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
	"golang.org/x/sys/unix"
)

// results is everything one run measured.
type results struct {
	cfg     *config
	machine machine
	started time.Time
	took    time.Duration

	ready     map[string][]upgradeResult // figure 1
	sockets   []socketResult             // figure 2
	load      []loadResult               // figure 3
	steady    map[string]*latencies      // figure 4
	storm     map[string]*latencies      // figure 4: the keepalive segments of figure 3
	footprint map[string]*footprint      // figure 5
	run       map[string][]runResult     // figure 6
	strace    []straceResult
	profiles  []profileResult
	notes     []string
}

type machine struct {
	Cores   int
	Model   string
	Kernel  string
	Go      string
	NoFile  uint64
	Loadavg string
}

type socketResult struct {
	N     int
	Ready map[string][]upgradeResult
}

// loadMode is one client mode of figure 3.
type loadMode struct {
	Name string
	Mode loadgen.Mode
	Body []byte
}

var loadModes = []loadMode{
	{"keep-alive, no retries", loadgen.ModeKeepAlive, nil},
	{"new connection per request", loadgen.ModeNewConn, nil},
	{"Go client (GET, retries)", loadgen.ModeGoClient, nil},
	{"Go client, POST 1 KiB body", loadgen.ModeGoClient, bytes.Repeat([]byte("x"), 1024)},
}

type loadResult struct {
	Mode loadMode
	Per  map[string]*loadAgg
}

type loadAgg struct {
	Upgrades int
	Requests int
	Failed   map[loadgen.Outcome]int
	Examples map[loadgen.Outcome]string
	Elapsed  time.Duration
}

func (a *loadAgg) failed() int {
	n := 0
	for _, v := range a.Failed {
		n += v
	}
	return n
}

// latencies gathers the successful request latencies and throughput of
// several load segments.
type latencies struct {
	all      []time.Duration
	requests int
	elapsed  time.Duration
}

func (l *latencies) add(r *loadgen.Result) {
	l.all = append(l.all, r.Latencies(nil)...)
	l.requests += len(r.Records)
	l.elapsed += r.Elapsed
}

func (l *latencies) rps() float64 {
	if l.elapsed <= 0 {
		return 0
	}
	return float64(l.requests) / l.elapsed.Seconds()
}

type footprint struct {
	Gens                int
	First, Second, Last sample
	FirstPID, LastPID   int
	SecondPID           int
}

type profileResult struct {
	Impl string
	Top  string
	Err  string
}

type straceResult struct {
	Impl    string
	Sockets int
	Summary string         // the top rows, for the report
	Calls   map[string]int // calls per syscall, all rows
	Err     string
}

// ips gives every chain of a run its own loopback address, so that chains
// never compete for ports.
type ips struct{ next int }

func (p *ips) take() string {
	p.next++
	return "127.0.0." + strconv.Itoa(10+p.next)
}

// rotate returns impls starting at i, so that no implementation always
// goes first.
func rotate(i int) []string {
	out := make([]string, len(impls))
	for j := range impls {
		out[j] = impls[(i+j)%len(impls)]
	}
	return out
}

func run(ctx context.Context, cfg *config, progress io.Writer) (*results, error) {
	res := &results{
		cfg:       cfg,
		started:   time.Now(),
		ready:     map[string][]upgradeResult{},
		steady:    map[string]*latencies{},
		storm:     map[string]*latencies{},
		footprint: map[string]*footprint{},
	}
	nofile, err := raiseNoFile()
	if err != nil {
		return nil, err
	}
	res.machine = describeMachine(nofile)
	need := 2*maxInt(cfg.sockets) + 200
	if uint64(need) > nofile {
		return nil, fmt.Errorf("RLIMIT_NOFILE hard limit %d is below the %d that %d sockets need", nofile, need, maxInt(cfg.sockets))
	}

	dir, err := os.MkdirTemp("", "tableflip-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p, err := newProcs()
	if err != nil {
		return nil, err
	}
	defer p.close()
	defer func() {
		if err := p.killAll(10 * time.Second); err != nil {
			fmt.Fprintln(progress, "bench:", err)
		}
	}()
	h, err := newHub(dir, p)
	if err != nil {
		return nil, err
	}
	defer h.close()
	b := &bencher{ctx: ctx, cfg: cfg, h: h, res: res, out: progress, dir: dir}

	steps := []struct {
		name string
		f    func() error
	}{
		{"upgrade to ready", b.readyLatency},
		{"inherited sockets", b.manySockets},
		{"failed requests under load", b.underLoad},
		{"steady state", b.steadyState},
		{"fds and RSS", b.footprints},
		{"syscall counts", b.straces},
		{"tableflip run", b.runVsLibrary},
	}
	for _, s := range steps {
		t := time.Now()
		fmt.Fprintf(progress, "bench: %s…\n", s.name)
		if err := s.f(); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Fprintf(progress, "bench: %s done in %s\n", s.name, time.Since(t).Round(time.Second))
	}
	if n := h.refusals.Load(); n > 0 {
		res.notes = append(res.notes, fmt.Sprintf("tableflip v1.2.3 refused %d upgrades with \"parent hasn't exited\" although its WaitForParent had returned (its run loop learns of the exit apart from WaitForParent); the runner sent SIGHUP again each time, and the time the old generation measures is that of the accepted attempt.", n))
	}
	res.took = time.Since(res.started)
	return res, nil
}

type bencher struct {
	dir string // the run's temporary directory
	ctx context.Context
	cfg *config
	h   *hub
	res *results
	out io.Writer
	ips ips
}

// startChains starts one chain per implementation, each with n idle
// listening sockets beside the HTTP one.
func (b *bencher) startChains(n int) (map[string]*chain, func(), error) {
	chains := map[string]*chain{}
	stop := func() {
		for _, c := range chains {
			c.stop()
		}
	}
	for _, impl := range impls {
		ip := b.ips.take()
		ports, err := pickPorts(ip, n+1)
		if err != nil {
			stop()
			return nil, nil, err
		}
		c, err := b.h.startChain(b.ctx, impl, ip, ports)
		if err != nil {
			stop()
			return nil, nil, err
		}
		chains[impl] = c
	}
	return chains, stop, nil
}

// upgrades runs n upgrades per chain, alternating the implementations
// upgrade by upgrade, after warm upgrades that are not counted.
func (b *bencher) upgrades(chains map[string]*chain, warm, n int) (map[string][]upgradeResult, error) {
	out := map[string][]upgradeResult{}
	for i := range warm + n {
		for _, impl := range rotate(i) {
			r, err := chains[impl].upgrade(b.ctx)
			if err != nil {
				return nil, err
			}
			if i >= warm {
				out[impl] = append(out[impl], r)
			}
		}
	}
	return out, nil
}

func (b *bencher) readyLatency() error {
	chains, stop, err := b.startChains(0)
	if err != nil {
		return err
	}
	defer stop()
	b.res.ready, err = b.upgrades(chains, 3, b.cfg.upgrades)
	return err
}

func (b *bencher) manySockets() error {
	for _, n := range b.cfg.sockets {
		fmt.Fprintf(b.out, "bench:   %d sockets\n", n)
		chains, stop, err := b.startChains(n)
		if err != nil {
			return err
		}
		r, err := b.upgrades(chains, 2, b.cfg.socketUpgrades)
		stop()
		if err != nil {
			return err
		}
		b.res.sockets = append(b.res.sockets, socketResult{N: n, Ready: r})
	}
	return nil
}

func (b *bencher) loadOptions(c *chain, m loadMode) loadgen.Options {
	return loadgen.Options{
		URL:      c.URL(),
		Mode:     m.Mode,
		Body:     m.Body,
		Conns:    b.cfg.conns,
		Duration: 10 * time.Minute, // stopped by the runner long before
		Timeout:  5 * time.Second,
	}
}

func (b *bencher) underLoad() error {
	chains, stop, err := b.startChains(0)
	if err != nil {
		return err
	}
	defer stop()
	for mi, m := range loadModes {
		fmt.Fprintf(b.out, "bench:   %s\n", m.Name)
		lr := loadResult{Mode: m, Per: map[string]*loadAgg{}}
		for _, impl := range impls {
			lr.Per[impl] = &loadAgg{Failed: map[loadgen.Outcome]int{}, Examples: map[loadgen.Outcome]string{}}
		}
		for round := 0; lr.Per[impls[0]].Upgrades < b.cfg.loadUpgrades; round++ {
			k := min(b.cfg.segment, b.cfg.loadUpgrades-lr.Per[impls[0]].Upgrades)
			for _, impl := range rotate(round) {
				c := chains[impl]
				l, err := loadgen.Start(b.ctx, b.loadOptions(c, m))
				if err != nil {
					return err
				}
				// Let every client connect before the first upgrade.
				time.Sleep(100 * time.Millisecond)
				for range k {
					if _, err := c.upgrade(b.ctx); err != nil {
						l.Stop()
						return err
					}
				}
				r := l.Stop()
				a := lr.Per[impl]
				a.Upgrades += k
				a.Requests += len(r.Records)
				a.Elapsed += r.Elapsed
				for o, n := range r.Failures() {
					a.Failed[o] += n
				}
				for o, e := range r.Examples {
					if _, ok := a.Examples[o]; !ok {
						a.Examples[o] = e
					}
				}
				if mi == 0 {
					if b.res.storm[impl] == nil {
						b.res.storm[impl] = &latencies{}
					}
					b.res.storm[impl].add(r)
				}
			}
		}
		b.res.load = append(b.res.load, lr)
	}
	return nil
}

func (b *bencher) steadyState() error {
	chains, stop, err := b.startChains(0)
	if err != nil {
		return err
	}
	defer stop()
	// Three rounds per implementation, alternating, each a third of the
	// time asked for.
	const rounds = 3
	seg := time.Duration(b.cfg.steady) * time.Second / rounds
	for round := range rounds {
		for _, impl := range rotate(round) {
			opts := b.loadOptions(chains[impl], loadModes[0])
			opts.Duration = seg
			r, err := loadgen.Run(b.ctx, opts)
			if err != nil {
				return err
			}
			if b.ctx.Err() != nil {
				return b.ctx.Err()
			}
			if b.res.steady[impl] == nil {
				b.res.steady[impl] = &latencies{}
			}
			b.res.steady[impl].add(r)
		}
	}
	if b.cfg.profile {
		b.profiles(chains)
	}
	return nil
}

// profiles takes a CPU profile of each implementation's server under the
// same keep-alive load and keeps the top of go tool pprof's summary.
func (b *bencher) profiles(chains map[string]*chain) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.res.notes = append(b.res.notes, "go is not on PATH: no CPU profiles.")
		return
	}
	for _, impl := range impls {
		pr := profileResult{Impl: impl}
		top, err := b.profile(goTool, chains[impl])
		if err != nil {
			pr.Err = err.Error()
		}
		pr.Top = top
		b.res.profiles = append(b.res.profiles, pr)
	}
}

func (b *bencher) profile(goTool string, c *chain) (string, error) {
	l, err := loadgen.Start(b.ctx, b.loadOptions(c, loadModes[0]))
	if err != nil {
		return "", err
	}
	time.Sleep(200 * time.Millisecond)
	path, err := c.profile(b.ctx, 3*time.Second)
	l.Stop()
	if err != nil {
		return "", err
	}
	top, err := b.pprof(goTool, path, "-top", "-nodecount=25")
	if err != nil || c.impl != implOurs {
		return top, err
	}
	// What the drain wrapper itself costs: the samples under package
	// drain, by cumulative time.
	focus, err := b.pprof(goTool, path, "-top", "-cum", "-nodecount=12", "-focus=tableflip/drain")
	return top + "\n\n# -focus=tableflip/drain -cum\n" + focus, err
}

// pprof runs go tool pprof on a profile of the sample server.
func (b *bencher) pprof(goTool, path string, args ...string) (string, error) {
	out, err := os.CreateTemp(b.h.dir, "pprof-*.txt")
	if err != nil {
		return "", err
	}
	defer out.Close()
	argv := append([]string{goTool, "tool", "pprof"}, args...)
	pid, err := b.h.procs.start(append(argv, b.h.exe, path), os.Environ(), out, out)
	if err != nil {
		return "", err
	}
	exited, status := b.h.procs.wait(pid)
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		_ = unix.Kill(pid, unix.SIGKILL)
		<-exited
	}
	txt, _ := os.ReadFile(out.Name())
	if ws := status(); ws.ExitStatus() != 0 {
		return "", fmt.Errorf("go tool pprof: %s: %s", waitString(ws), txt)
	}
	return strings.TrimSpace(string(txt)), nil
}

func (b *bencher) footprints() error {
	chains, stop, err := b.startChains(0)
	if err != nil {
		return err
	}
	defer stop()
	// Every generation is sampled at the same point: ready, its parent
	// reaped, and a moment to settle.
	const settle = 300 * time.Millisecond
	time.Sleep(settle)
	for _, impl := range impls {
		c := chains[impl]
		s, err := sampleProc(c.cur.pid)
		if err != nil {
			return err
		}
		b.res.footprint[impl] = &footprint{First: s, FirstPID: c.cur.pid}
	}
	for i := range b.cfg.footprint {
		for _, impl := range rotate(i) {
			c := chains[impl]
			if _, err := c.upgrade(b.ctx); err != nil {
				return err
			}
			if i == 0 {
				time.Sleep(settle)
				s, err := sampleProc(c.cur.pid)
				if err != nil {
					return err
				}
				b.res.footprint[impl].Second = s
				b.res.footprint[impl].SecondPID = c.cur.pid
			}
		}
		if (i+1)%100 == 0 {
			fmt.Fprintf(b.out, "bench:   %d upgrades each\n", i+1)
		}
	}
	time.Sleep(settle)
	for _, impl := range impls {
		c := chains[impl]
		s, err := sampleProc(c.cur.pid)
		if err != nil {
			return err
		}
		f := b.res.footprint[impl]
		f.Last, f.LastPID, f.Gens = s, c.cur.pid, c.gens
	}
	return nil
}

// straces counts the syscalls of one upgrade per implementation, with no
// idle sockets and with the most, by attaching strace -c -f to the old
// generation: it follows the new one from its fork through its start
// until the runner detaches it.
func (b *bencher) straces() error {
	if !b.cfg.strace {
		return nil
	}
	path, err := exec.LookPath("strace")
	if err != nil {
		b.res.notes = append(b.res.notes, "strace is not installed: no syscall counts.")
		return nil
	}
	counts := []int{0}
	if len(b.cfg.sockets) > 0 {
		counts = append(counts, maxInt(b.cfg.sockets))
	}
	for _, n := range counts {
		chains, stop, err := b.startChains(n)
		if err != nil {
			return err
		}
		for _, impl := range impls {
			out, err := b.straceUpgrade(path, chains[impl])
			sr := straceResult{Impl: impl, Sockets: n, Summary: trimStrace(out, 14), Calls: straceCalls(out)}
			if err != nil {
				sr.Err = err.Error()
			}
			b.res.strace = append(b.res.strace, sr)
		}
		stop()
	}
	return nil
}

func (b *bencher) straceUpgrade(path string, c *chain) (string, error) {
	// A warm upgrade first, so that the traced one is like the others.
	if _, err := c.upgrade(b.ctx); err != nil {
		return "", err
	}
	file := filepath.Join(b.h.dir, "strace-"+c.id+".txt")
	pid := c.cur.pid
	spid, err := b.h.procs.start([]string{path, "-c", "-f", "-o", file, "-p", strconv.Itoa(pid)}, os.Environ(), nil, c.log)
	if err != nil {
		return "", err
	}
	exited, _ := b.h.procs.wait(spid)
	if err := waitTraced(pid, 5*time.Second); err != nil {
		_ = unix.Kill(spid, unix.SIGKILL)
		<-exited
		return "", err
	}
	_, uerr := c.upgrade(b.ctx)
	// Let the new generation settle under the tracer, then detach.
	time.Sleep(200 * time.Millisecond)
	_ = unix.Kill(spid, unix.SIGINT)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = unix.Kill(spid, unix.SIGKILL)
		<-exited
	}
	if uerr != nil {
		return "", uerr
	}
	out, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return string(out), nil
}

// straceCalls reads the calls column of a strace -c table.
func straceCalls(s string) map[string]int {
	m := map[string]int{}
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		// % time, seconds, usecs/call, calls, [errors], syscall
		if len(f) < 5 || f[len(f)-1] == "total" || f[len(f)-1] == "syscall" {
			continue
		}
		if n, err := strconv.Atoi(f[3]); err == nil {
			m[f[len(f)-1]] = n
		}
	}
	return m
}

// waitTraced waits until every thread of pid has a tracer.
func waitTraced(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		if err != nil {
			return err
		}
		all := len(tasks) > 0
		for _, t := range tasks {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/status")
			if err != nil || strings.Contains(string(b), "TracerPid:\t0\n") {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("strace did not attach in time")
}

// trimStrace keeps the header and the top rows of a strace -c table, and
// its total.
func trimStrace(s string, rows int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	var out []string
	body := 0
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "% time") || strings.HasPrefix(l, "------"):
			out = append(out, l)
		case strings.Contains(l, "total") && i == len(lines)-1:
			out = append(out, l)
		case strings.HasPrefix(l, "strace:"):
		default:
			if body < rows {
				out = append(out, l)
			}
			body++
		}
	}
	return strings.Join(out, "\n")
}

func describeMachine(nofile uint64) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), NoFile: nofile}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.Model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.Loadavg = strings.Join(f[:3], " ")
		}
	}
	return m
}

func maxInt(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
