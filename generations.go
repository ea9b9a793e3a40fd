package tableflip

import (
	"slices"
	"sync"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/proc"
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
	// ParentPID is the pid of the generation that started it, if known.
	ParentPID int `json:"parent_pid,omitempty"`
	// Started is when the generation called New; zero if unknown (a
	// parent that does not run several generations does not say).
	Started time.Time `json:"started,omitzero"`
	// AgeSeconds is the time since Started, when Stats was taken.
	AgeSeconds float64 `json:"age_seconds,omitempty"`
	// DrainingSince is when a newer generation took over from this one;
	// zero for the generation that serves.
	DrainingSince time.Time `json:"draining_since,omitzero"`
	// Conns is how many connections the generation holds open: those
	// accepted on the listeners the Upgrader handed out (the control
	// socket's included) and not closed yet. The serving generation
	// counts its own; an older one is asked, and is -1 if it did not
	// answer in time, or off Linux.
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

// generations tracks the older generations still alive, and this one's
// drain. Stats and the handshake read it from other goroutines than the
// run loop, so it has a mutex, which guards plain fields only.
type generations struct {
	mu    sync.Mutex
	older []*olderGen // oldest first
	// deadlineHits counts the times this generation's drain deadline
	// passed: 0 or 1.
	deadlineHits uint64
	// handedOverAt is when this generation's successor was acknowledged.
	handedOverAt time.Time
}

// init learns from the parent's hello which older generations are alive.
// A parent that sent no list stands for itself alone.
func (g *generations) init(p *parentLink) {
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
	for _, l := range p.live {
		info := GenerationInfo{PID: l.PID, Generation: l.Generation, Started: fromUnixNano(l.Started), DrainingSince: fromUnixNano(l.Draining)}
		if l.PID == p.pid {
			// Its end of file on the handover socket says when it
			// exits: no need to watch its pid.
			parent.info = info
			continue
		}
		w, ok := proc.WatchPID(l.PID)
		if !ok {
			continue
		}
		g.older = append(g.older, &olderGen{info: info, alive: w.Alive, release: w.Close})
	}
	g.older = append(g.older, parent)
}

// live returns the older generations that are still alive, oldest first,
// and forgets the others.
func (g *generations) live() []GenerationInfo {
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

// handover is the list of live generations for the hello: the older ones
// and self, or nil unless several generations may run (the hello then
// stays byte for byte what a parent of one generation at a time sends).
func (g *generations) handover(self GenerationInfo, multi bool) []handover.LiveGeneration {
	if !multi {
		return nil
	}
	var list []handover.LiveGeneration
	for _, o := range append(g.live(), self) {
		list = append(list, handover.LiveGeneration{
			PID: o.PID, Generation: o.Generation,
			Started: toUnixNano(o.Started), Draining: toUnixNano(o.DrainingSince),
		})
	}
	return list
}

func (g *generations) handedOver(at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.handedOverAt = at
}

func (g *generations) deadlineHit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deadlineHits++
}

// stats lists the live generations, oldest first and self last, with
// their ages and open connections (self's are selfConns; the older ones
// are asked, see conns.go), and the drain deadline hits. Self drains too
// once it has handed over: it no longer answers the control socket, but
// its Stats still tell.
func (g *generations) stats(self GenerationInfo, selfConns int) ([]GenerationInfo, uint64) {
	list := g.live()
	countOlder(list)
	g.mu.Lock()
	self.DrainingSince = g.handedOverAt
	hits := g.deadlineHits
	g.mu.Unlock()
	self.Conns = selfConns
	list = append(list, self)
	now := time.Now()
	for i := range list {
		if !list[i].Started.IsZero() {
			list[i].AgeSeconds = now.Sub(list[i].Started).Seconds()
		}
	}
	return list, hits
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
