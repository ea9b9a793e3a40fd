//go:build unix

// The check's plan: start the server, put it under load, upgrade it
// again and again, stop it, and report. The steps live beside this file:
// lifecycle_unix.go (start, readiness, stop), load_unix.go (probe and
// load), upgrade_unix.go (one upgrade) and audit_unix.go (what is left).

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// checker runs one check. Its methods run on one goroutine, except
// progressState, which the progress line calls.
type checker struct {
	cfg    *checkConfig
	sig    syscall.Signal
	procs  *proctree.Reaper
	events *procEvents // nil where the kernel does not tell
	prog   *progress
	rep    *report
	epoch  time.Time
	self   int

	dir     string
	logPath string
	pidFile string
	url     string      // plain URL (or the user's)
	tlsURL  string      // the sample server's https URL, if any
	tlsConf *tls.Config // trusts the sample server's certificate

	firstPID int // also the id of the servers' process group
	olds     []int

	loads []*loadgen.Load

	mu       sync.Mutex // guards the fields below, read by the progress line
	current  int
	gen      int
	upgrades int
}

func runCheck(ctx context.Context, cfg *checkConfig, prog *progress) (*report, error) {
	sig, err := parseSignal(cfg.signal)
	if err != nil {
		return nil, usageErrorf("-signal: %v", err)
	}
	c := &checker{cfg: cfg, sig: sig, prog: prog, epoch: time.Now(), self: os.Getpid()}
	c.rep = &report{
		Signal:         signalName(sig),
		Method:         cfg.method,
		UpgradesWanted: cfg.upgrades,
		ServerLog:      cfg.logFile,
		FDSlack:        cfg.fdSlack,
		Leftovers:      []leftover{},
		Problems:       []string{},
		epoch:          c.epoch,
	}
	if cfg.control != "" {
		c.rep.Signal = "none: control socket " + cfg.control
	}
	if slices.Equal(cfg.modes, []loadgen.Mode{loadgen.ModeGRPC}) {
		c.rep.Method = "POST" // whatever -method says
	}
	if cfg.server == nil {
		c.rep.Server = "built-in sample server"
	} else {
		c.rep.Server = strings.Join(cfg.server, " ")
	}
	c.rep.Subreaper = becomeSubreaper()
	c.procs = proctree.New()
	defer c.procs.Close()
	if ev, err := openProcEvents(); err == nil {
		c.events = ev
		c.rep.ProcessEvents = true
		defer ev.close()
	}
	c.dir, err = os.MkdirTemp("", "tableflip-check-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(c.dir)
	defer c.cleanup()

	err = c.check(ctx)
	c.stopLoad()
	if c.loads == nil {
		return nil, err
	}
	c.rep.Elapsed = time.Since(c.epoch)
	if err != nil && !errors.Is(err, context.Canceled) {
		// The first line; the server's output follows on stderr.
		c.rep.Problems = append(c.rep.Problems, strings.SplitN(err.Error(), "\n", 2)[0])
	}
	c.rep.finish(len(cfg.modes) * cfg.conns)
	return c.rep, err
}

func (c *checker) check(ctx context.Context) error {
	if err := c.startServer(); err != nil {
		return err
	}
	if err := c.waitFirstReady(ctx); err != nil {
		return err
	}
	if err := c.startLoad(ctx); err != nil {
		return err
	}
	c.prog.start(c.progressState)
	c.prog.event(fmt.Sprintf("generation 1 (pid %d) ready; load started", c.current))
	if err := pause(ctx, c.cfg.interval); err != nil {
		return err
	}
	c.rep.First = sampleGeneration(1, c.current)
	loadStart := time.Now()
	for n := 1; ; n++ {
		if c.cfg.upgrades > 0 && n > c.cfg.upgrades {
			break
		}
		if c.cfg.duration > 0 && time.Since(loadStart) >= c.cfg.duration {
			break
		}
		if err := c.upgrade(ctx, n); err != nil {
			return err
		}
		if err := pause(ctx, c.cfg.interval); err != nil {
			return err
		}
	}
	c.rep.Last = sampleGeneration(c.gen, c.current)
	c.stopLoad()
	c.findLeftovers()
	if err := c.stopServer(ctx); err != nil {
		return err
	}
	c.findStrays()
	return nil
}

func (c *checker) progressState() progressState {
	s := progressState{wanted: c.cfg.upgrades}
	for _, l := range c.loads {
		n := l.Counts()
		s.requests += n.Requests
		s.failed += n.Failed
		s.ended += n.Ended
	}
	c.mu.Lock()
	s.upgrades, s.gen, s.pid = c.upgrades, c.gen, c.current
	c.mu.Unlock()
	return s
}

func (c *checker) setCurrent(pid int, upgraded bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current = pid
	c.gen++
	if upgraded {
		c.upgrades++
	}
}

func (c *checker) currentPID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
