package tableflip

import (
	"os"
	"slices"
	"sync"
	"time"
)

// # Several generations at once
//
// By default (Options.MaxGenerations 0 or 1) a generation refuses to
// upgrade with ErrParentRunning until its parent has exited, as
// cloudflare/tableflip does: at most two generations are ever alive, and
// one slow connection in the old one blocks every later upgrade.
//
// With MaxGenerations N > 1, a ready generation may upgrade while older
// generations still drain, as long as at most N generations, the new one
// included, would be alive. At the cap, Upgrade refuses with
// ErrTooManyGenerations and starts nothing: the draining generations are
// left to finish (or to meet their DrainTimeout), and the upgrade can be
// asked for again once one has exited. Refusing was chosen over telling
// the oldest to finish early because it is predictable: an upgrade never
// cuts connections that the operator's own deadline still allows.
//
// Each generation learns which older generations are alive from its
// parent's hello (see internal/handover, Hello.Live), and checks them
// with a pidfd on Linux, kill(pid, 0) elsewhere; its parent's exit it
// sees as end of file on the handover socket. The serving generation's
// Stats and control socket "status" list them all.
//
// # The drain deadline
//
// With Options.DrainTimeout, a generation that has handed over enforces
// its own deadline: DrainTimeout after the new generation was ready, it
// logs, counts (Stats.DrainDeadlineHits), and sends itself SIGTERM, so
// that the program's graceful shutdown runs; if the process is still
// alive a grace of min(5s, DrainTimeout) later, it sends itself SIGKILL.
// That happens whatever the program does. The newer generations do not
// enforce it on their elders: a generation's deadline is its own, and a
// program started with a different DrainTimeout keeps it.

// GenerationInfo describes one live generation in Stats.
type GenerationInfo struct {
	PID        int    `json:"pid"`
	Generation uint64 `json:"generation,omitempty"`
	// Started is when the generation called New; zero if unknown (a
	// parent that does not run several generations does not say).
	Started time.Time `json:"started,omitzero"`
	// AgeSeconds is the time since Started, when Stats was taken.
	AgeSeconds float64 `json:"age_seconds,omitempty"`
	// DrainingSince is when a newer generation took over from this one;
	// zero for the generation that serves.
	DrainingSince time.Time `json:"draining_since,omitzero"`
	// Conns is how many connections the generation holds open:
	// established TCP connections and Unix stream connections accepted
	// on a named socket (the control socket's included), as the kernel
	// reports them in /proc; -1 where that cannot be read (platforms
	// other than Linux, or another user's process).
	Conns int `json:"conns"`
}

// olderGen is a generation older than this one that was alive when it
// was last looked at.
type olderGen struct {
	info GenerationInfo
	// alive reports whether it still runs; release frees what alive
	// needs once it has reported false.
	alive   func() bool
	release func()
	// drainingSince, if not nil, tells DrainingSince once it is known
	// (the parent's, at its acknowledgement).
	drainingSince func() time.Time
}

// generations tracks the older generations still alive. Stats and the
// handshake read it from other goroutines than the run loop, so it has
// a mutex.
type generations struct {
	mu    sync.Mutex
	older []*olderGen // oldest first
	// deadlineHits counts the times this generation's drain deadline
	// passed: 0 or 1.
	deadlineHits uint64
	// handedOver is when this generation's successor was acknowledged.
	handedOver time.Time
}

// liveOlder returns the older generations that are still alive, oldest
// first, and forgets the others.
func (g *generations) liveOlder() []GenerationInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	var live []GenerationInfo
	g.older = slices.DeleteFunc(g.older, func(o *olderGen) bool {
		if o.alive() {
			if o.info.DrainingSince.IsZero() && o.drainingSince != nil {
				o.info.DrainingSince = o.drainingSince()
			}
			live = append(live, o.info)
			return false
		}
		if o.release != nil {
			o.release()
		}
		return true
	})
	return live
}

// multiGeneration reports whether upgrades may overlap older
// generations' drains.
func (u *Upgrader) multiGeneration() bool {
	return u.opts.MaxGenerations > 1
}

// atGenerationCap reports whether an upgrade now would make more than
// MaxGenerations generations alive: the older ones, this one and the new
// one.
func (u *Upgrader) atGenerationCap() bool {
	return len(u.gens.liveOlder())+2 > u.opts.MaxGenerations
}

// generationStats adds the live generations to st: Generations lists
// them all, oldest first and this one last, and Draining the older ones'
// pids.
func (u *Upgrader) generationStats(st *Stats) {
	now := time.Now()
	live := u.gens.liveOlder()
	self := GenerationInfo{PID: os.Getpid(), Generation: st.Generation, Started: st.Started}
	u.gens.mu.Lock()
	// Zero unless this one has handed over: then it drains too (it no
	// longer answers the control socket, but its Stats still tell).
	self.DrainingSince = u.gens.handedOver
	st.DrainDeadlineHits = u.gens.deadlineHits
	u.gens.mu.Unlock()
	st.Generations = append(live, self)
	st.Draining = nil
	for i := range st.Generations {
		g := &st.Generations[i]
		if !g.Started.IsZero() {
			g.AgeSeconds = now.Sub(g.Started).Seconds()
		}
		g.Conns = openConns(g.PID)
		if g.PID != self.PID {
			st.Draining = append(st.Draining, g.PID)
		}
	}
}
