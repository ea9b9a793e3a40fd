//go:build unix

package tableflip

import (
	"os"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"golang.org/x/sys/unix"
)

// initGenerations learns from the parent's hello which older generations
// are alive. A parent that sent no list stands for itself alone.
func (u *Upgrader) initGenerations() {
	p := u.parent
	if p == nil {
		return
	}
	parent := &olderGen{
		info:  GenerationInfo{PID: p.pid, Generation: p.generation},
		alive: func() bool { return !closed(p.exited) },
		drainingSince: func() time.Time {
			if closed(p.ack) {
				return p.ackAt
			}
			return time.Time{}
		},
	}
	for _, g := range p.live {
		info := GenerationInfo{PID: g.PID, Generation: g.Generation, Started: fromUnixNano(g.Started), DrainingSince: fromUnixNano(g.Draining)}
		if g.PID == p.pid {
			// Its end of file on the handover socket says when it
			// exits: no need to watch its pid.
			parent.info = info
			continue
		}
		alive, release, ok := watchProcess(g.PID)
		if !ok {
			continue
		}
		u.gens.older = append(u.gens.older, &olderGen{info: info, alive: alive, release: release})
	}
	u.gens.older = append(u.gens.older, parent)
}

// handoverGenerations is the list of live generations for the hello: the
// older ones and this one, or nil unless several generations may run.
func (u *Upgrader) handoverGenerations() []handover.LiveGeneration {
	if !u.multiGeneration() {
		// The hello stays byte for byte what it was.
		return nil
	}
	var list []handover.LiveGeneration
	for _, g := range u.gens.liveOlder() {
		list = append(list, handover.LiveGeneration{
			PID: g.PID, Generation: g.Generation,
			Started: toUnixNano(g.Started), Draining: toUnixNano(g.DrainingSince),
		})
	}
	// generation and started are set before the run loop starts and
	// never change.
	return append(list, handover.LiveGeneration{
		PID: os.Getpid(), Generation: u.stats.generation, Started: toUnixNano(u.stats.started),
	})
}

// handedOver is called by the run loop once an upgrade succeeded: this
// generation drains from now on, and with DrainTimeout its deadline runs.
func (u *Upgrader) handedOver() {
	now := time.Now()
	u.gens.mu.Lock()
	u.gens.handedOver = now
	u.gens.mu.Unlock()
	if d := u.opts.DrainTimeout; d > 0 {
		go u.enforceDrainDeadline(d)
	}
}

// enforceDrainDeadline makes this process exit d from now: SIGTERM, so
// that the program's own graceful path runs, then SIGKILL after a grace.
// Signals rather than os.Exit: the program decides what SIGTERM means,
// and SIGKILL is the one thing it cannot ignore or block.
func (u *Upgrader) enforceDrainDeadline(d time.Duration) {
	time.Sleep(d)
	grace := min(killGrace, d)
	u.gens.mu.Lock()
	u.gens.deadlineHits++
	u.gens.mu.Unlock()
	u.log.Warn("tableflip: drain deadline passed; sending SIGTERM to this generation",
		"pid", os.Getpid(), "drain_timeout", d, "grace", grace)
	_ = unix.Kill(os.Getpid(), unix.SIGTERM)
	time.Sleep(grace)
	u.log.Error("tableflip: still draining after the grace; sending SIGKILL to this generation",
		"pid", os.Getpid(), "grace", grace)
	_ = unix.Kill(os.Getpid(), unix.SIGKILL)
}

// killAlive reports whether pid exists. A zombie counts as alive: kill
// cannot tell, and only a pidfd can.
// processGone reports whether pid has exited, zombie or not where the
// platform can tell (Linux); elsewhere a zombie counts as alive.
func processGone(pid int) bool {
	alive, release, ok := watchProcess(pid)
	if !ok {
		return true
	}
	if release != nil {
		defer release()
	}
	return !alive()
}

func killAlive(pid int) func() bool {
	return func() bool {
		err := unix.Kill(pid, 0)
		return err == nil || err == unix.EPERM
	}
}

func toUnixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
