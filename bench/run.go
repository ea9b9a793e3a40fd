//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"golang.org/x/sys/unix"
)

// Figure 6: tableflip run against the library's own upgrade, for the same
// program: the README's (examples/server), built as it stands, once run
// alone (its Upgrader upgrades it: a new process of its own hands over)
// and once under tableflip run (the supervisor starts a new generation
// with the socket it holds). Both are upgraded the same way, through
// their control socket, as `tableflip upgrade` does, and timed the same
// way: from the request to the answer, which comes once the new
// generation is ready. The upgrades alternate, and each waits until the
// old generation has exited (the library refuses to upgrade before).

// Implementations of figure 6.
const (
	runLibrary    = "library"
	runRun        = "run"
	runBackToBack = "run, back to back"
)

// runResult is one upgrade of figure 6.
type runResult struct {
	Seen   time.Duration // request to answer, at the client
	Report time.Duration // the answer's own seconds
}

// runChain is the README program, alone or under tableflip run.
type runChain struct {
	impl    string
	control string
	pid     int // the process started: the program, or the supervisor
}

func (b *bencher) runVsLibrary() error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.res.notes = append(b.res.notes, "Figure 6 not measured: no go command to build examples/server and cmd/tableflip with.")
		return nil
	}
	bin := filepath.Join(b.dir, "bin")
	for name, pkg := range map[string]string{
		"server":    "github.com/seed589fcc9d/tableflip/examples/server",
		"tableflip": "github.com/seed589fcc9d/tableflip/cmd/tableflip",
	} {
		if out, err := exec.CommandContext(b.ctx, goTool, "build", "-o", filepath.Join(bin, name), pkg).CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	chains := map[string]*runChain{}
	defer func() {
		for _, c := range chains {
			unix.Kill(c.pid, unix.SIGTERM)
			done, _ := b.h.procs.wait(c.pid)
			select {
			case <-done:
			case <-time.After(drainTimeout):
			}
		}
	}()
	for _, impl := range []string{runLibrary, runRun} {
		ip := b.ips.take()
		ports, err := pickPorts(ip, 1)
		if err != nil {
			return err
		}
		addr := net.JoinHostPort(ip, strconv.Itoa(ports[0]))
		c := &runChain{impl: impl, control: filepath.Join(b.dir, impl+".sock")}
		argv := []string{filepath.Join(bin, "server"), "-addr", addr, "-control", c.control}
		if impl == runRun {
			argv = []string{filepath.Join(bin, "tableflip"), "run", "-listen", "tcp://" + addr, "-control", c.control,
				"--", filepath.Join(bin, "server"), "-addr", addr}
		}
		if c.pid, err = b.h.procs.start(argv, os.Environ(), nil, nil); err != nil {
			return err
		}
		chains[impl] = c
		if err := c.waitReady(b.ctx); err != nil {
			return fmt.Errorf("%s: %w", impl, err)
		}
	}
	const warm = 3
	b.res.run = map[string][]runResult{}
	// Strictly alternating: each upgrade follows one of the other,
	// which gives the supervisor the time to start its next zygote, as
	// upgrades a few milliseconds apart rarely come in production.
	for i := range warm + b.cfg.runUpgrades {
		for _, impl := range []string{runLibrary, runRun} {
			r, err := chains[impl].upgrade(b.ctx)
			if err != nil {
				return fmt.Errorf("%s: upgrade %d: %w", impl, i+1, err)
			}
			if i >= warm {
				b.res.run[impl] = append(b.res.run[impl], r)
			}
		}
	}
	// And back to back, where the next zygote may still be starting.
	for i := range max(1, b.cfg.runUpgrades/2) {
		r, err := chains[runRun].upgrade(b.ctx)
		if err != nil {
			return fmt.Errorf("%s: back-to-back upgrade %d: %w", runRun, i+1, err)
		}
		b.res.run[runBackToBack] = append(b.res.run[runBackToBack], r)
	}
	return nil
}

// waitReady waits until the control socket answers with a ready status.
func (c *runChain) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := tableflip.ControlCall(ctx, c.control, tableflip.ControlStatus)
		if err == nil && resp.OK && resp.Status.Ready {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("not ready within 30s: %v", err)
		}
	}
}

// upgrade upgrades once, then waits until the old generation has exited.
func (c *runChain) upgrade(ctx context.Context) (runResult, error) {
	ctx, cancel := context.WithTimeout(ctx, upgradeTimeout+drainTimeout)
	defer cancel()
	st, err := tableflip.ControlCall(ctx, c.control, tableflip.ControlStatus)
	if err != nil || !st.OK || len(st.Status.Generations) == 0 {
		return runResult{}, fmt.Errorf("status: %v %+v", err, st)
	}
	gens := st.Status.Generations
	old := gens[len(gens)-1].PID
	start := time.Now()
	resp, err := tableflip.ControlCall(ctx, c.control, tableflip.ControlUpgrade)
	seen := time.Since(start)
	if err != nil {
		return runResult{}, err
	}
	if !resp.OK {
		return runResult{}, resp.Error
	}
	if err := waitGone(ctx, old); err != nil {
		return runResult{}, fmt.Errorf("old generation %d: %w", old, err)
	}
	return runResult{Seen: seen, Report: time.Duration(resp.Upgrade.Seconds * float64(time.Second))}, nil
}

// waitGone waits until pid has exited, whoever its parent: a pidfd becomes
// readable then, zombie or not.
func waitGone(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	deadline, _ := ctx.Deadline()
	ms := int(time.Until(deadline).Milliseconds())
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n == 0:
			return errors.New("still running")
		}
		return nil
	}
}
