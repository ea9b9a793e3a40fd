//go:build unix

package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// upgrade asks the serving generation for upgrade n, by signal or over
// the control socket, waits for the new generation to be named and to
// answer, then for the old one to exit, and records what it saw.
func (c *checker) upgrade(ctx context.Context, n int) (err error) {
	old := c.currentPID()
	gen := c.gen
	t0 := time.Now()
	u := upgradeReport{N: n, OldPID: old, SignalAt: t0.Sub(c.epoch)}
	defer func() { c.rep.Upgrades = append(c.rep.Upgrades, u) }()

	ctx2, cancel := context.WithTimeoutCause(ctx, c.cfg.upgradeTimeout, errTimedOut)
	defer cancel()
	var pid int
	server := 0 // under a supervisor (tableflip run): its pid, which stays
	if c.cfg.control != "" {
		if g := c.servingGeneration(ctx2, old); g != old {
			server, old, u.OldPID = old, g, g
		}
		// The answer names the new generation: no PID file to watch.
		if pid, err = c.controlUpgrade(ctx2, n, gen, old); err != nil {
			return err
		}
	} else {
		if c.events != nil {
			c.events.watch(old)
			defer c.events.unwatch(old)
		}
		newGen := watchNewGeneration(old)
		if err := sendSignal(old, c.sig); err != nil {
			return serverErrorf("upgrade %d: cannot send %s to generation %d (pid %d): %v%s", n, signalName(c.sig), gen, old, err, c.logTail())
		}
		// A new generation that ends before it is ready fails the
		// upgrade at once, not at -upgrade-timeout.
		look := func() (<-chan struct{}, error) {
			p, how, ok, heard := 0, "", false, false
			var born <-chan struct{}
			if c.events != nil {
				var e proctree.Exit
				if p, e, ok, born, heard = c.events.ended(old); ok {
					how = " (" + e.String() + ")"
				}
			}
			if !heard {
				// Looking may miss a short life; hearing does not.
				p, ok = newGen.ended(c.procs.Alive)
			}
			if ok {
				return nil, serverErrorf("upgrade %d: the new generation (pid %d) ended%s %s after %s, before it was ready; generation %d (pid %d) serves on%s",
					n, p, how, fmtDur(time.Since(t0)), signalName(c.sig), gen, old, c.logTail())
			}
			return born, nil
		}
		pid, err = c.waitPIDFile(ctx2, old, old, look)
		switch {
		case interrupted(ctx2) != nil:
			return ctx.Err()
		case errors.Is(err, errEnded):
			return c.diedOnSignal(n, gen, old, t0)
		case errors.Is(err, context.DeadlineExceeded):
			return serverErrorf("upgrade %d: %s still names generation %d (pid %d) %s after %s (-upgrade-timeout): the server ignores the signal or its upgrade failed%s",
				n, c.pidFile, gen, old, c.cfg.upgradeTimeout, signalName(c.sig), c.logTail())
		case err != nil:
			return err
		}
	}
	pidAt := time.Now()
	u.PIDAt = pidAt.Sub(c.epoch)
	if err := c.confirm(ctx2, fmt.Sprintf("upgrade %d: ", n), "the new generation", pid); err != nil {
		return err
	}
	ready := time.Now()
	u.NewPID, u.ReadyAt, u.ToReady = pid, ready.Sub(c.epoch), ready.Sub(t0)
	c.olds = append(c.olds, old)
	c.setCurrent(cmp.Or(server, pid), true)

	ctx3, cancel3 := context.WithTimeout(ctx, c.cfg.exitTimeout)
	defer cancel3()
	at, err := c.procs.WaitExit(ctx3, old, pollInterval)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		u.OldExitAt = time.Since(c.epoch)
		c.rep.Notes = append(c.rep.Notes, fmt.Sprintf("generation %d (pid %d) was still running %s after its successor was ready (-exit-timeout)", gen, old, c.cfg.exitTimeout))
		c.prog.event(fmt.Sprintf("upgrade %d: pid %d -> %d, ready in %s; old generation still running after %s", n, old, pid, fmtDur(u.ToReady), c.cfg.exitTimeout))
	default:
		u.OldExited = true
		u.OldExitAt = at.Sub(c.epoch)
		u.OldExit = max(0, at.Sub(pidAt))
		c.prog.event(fmt.Sprintf("upgrade %d: pid %d -> %d, ready in %s, old generation exited %s after the new PID", n, old, pid, fmtDur(u.ToReady), fmtDur(u.OldExit)))
	}
	return nil
}

// controlUpgrade upgrades through the control socket and returns the new
// generation's pid. ctx carries -upgrade-timeout.
func (c *checker) controlUpgrade(ctx context.Context, n, gen, old int) (int, error) {
	resp, err := tableflip.ControlCall(ctx, c.cfg.control, tableflip.ControlUpgrade)
	switch {
	case interrupted(ctx) != nil:
		return 0, ctx.Err()
	case ctx.Err() != nil:
		return 0, serverErrorf("upgrade %d: no answer from the control socket %s within %s (-upgrade-timeout)%s", n, c.cfg.control, c.cfg.upgradeTimeout, c.logTail())
	case err != nil:
		return 0, serverErrorf("upgrade %d: %v%s", n, err, c.logTail())
	case !resp.OK:
		return 0, serverErrorf("upgrade %d: generation %d (pid %d) answered: %s%s", n, gen, old, describeControlError(resp.Error), c.logTail())
	case resp.Upgrade.PID == old:
		return 0, serverErrorf("upgrade %d: the control socket names pid %d, the old generation", n, old)
	}
	return resp.Upgrade.PID, nil
}

// diedOnSignal explains an old generation that ended without a successor.
func (c *checker) diedOnSignal(n, gen, old int, t0 time.Time) error {
	e, reaped := c.procs.WaitReaped(old)
	if reaped && e.Status.Signaled() && e.Status.Signal() == c.sig {
		return serverErrorf("upgrade %d: generation %d (pid %d) was killed by %s: the server does not handle that signal (-signal)%s",
			n, gen, old, signalName(c.sig), c.logTail())
	}
	how := "ended"
	if reaped {
		how = "ended (" + e.String() + ")"
	}
	return serverErrorf("upgrade %d: generation %d (pid %d) %s %s after %s, and no new generation wrote its PID to %s%s",
		n, gen, old, how, fmtDur(time.Since(t0)), signalName(c.sig), c.pidFile, c.logTail())
}

// servingGeneration returns the pid of the generation that serves for
// server, the process that answers on the control socket: server itself
// for a program on the Upgrader, whose every generation answers for
// itself; under tableflip run, whose pid stays the same for ever, the
// program's generation that its status lists last (the serving one).
// The check then waits for that generation's exit, not the server's.
func (c *checker) servingGeneration(ctx context.Context, server int) int {
	resp, err := tableflip.ControlCall(ctx, c.cfg.control, tableflip.ControlStatus)
	if err != nil || !resp.OK || resp.Status == nil || resp.Status.PID != server || len(resp.Status.Generations) == 0 {
		return server
	}
	return resp.Status.Generations[len(resp.Status.Generations)-1].PID
}
