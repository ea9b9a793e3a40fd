package tableflip

import (
	"sync"
	"time"
)

// Stats describes the running generation and the upgrades it has run. It is
// what Upgrader.Stats returns for metrics, and the body of the control
// socket's answer to "status" (see ControlRequest), where the field names
// are the JSON keys shown.
type Stats struct {
	// PID of this process.
	PID int `json:"pid"`
	// Generation counts the processes of the chain: 1 for one started
	// without a parent, and each upgrade's new generation one more than
	// the generation that started it.
	Generation uint64 `json:"generation"`
	// ParentPID is the pid of the generation that started this one, or 0.
	ParentPID int `json:"parent_pid,omitempty"`
	// Started is when this generation called New.
	Started time.Time `json:"started"`
	// Ready reports whether Ready has succeeded.
	Ready bool `json:"ready"`
	// Upgrading reports an upgrade under way.
	Upgrading bool `json:"upgrading"`
	// Exiting reports that Exit is closed: an upgrade succeeded or Stop
	// was called, and this generation is on its way out.
	Exiting bool `json:"exiting"`
	// UpgradesAttempted counts the upgrades this generation began (it
	// started, or tried to start, a new generation); requests refused at
	// once, such as ErrUpgradeInProgress, are not counted. Attempted is
	// Succeeded plus Failed, plus one while Upgrading.
	UpgradesAttempted uint64 `json:"upgrades_attempted"`
	UpgradesSucceeded uint64 `json:"upgrades_succeeded"`
	UpgradesFailed    uint64 `json:"upgrades_failed"`
	// LastFailure says why this generation's last failed upgrade failed,
	// and LastFailureAt when; nil and zero if none has failed.
	LastFailure   *ControlError `json:"last_failure,omitempty"`
	LastFailureAt time.Time     `json:"last_failure_at,omitzero"`
	// Draining lists the pids of the older generations that are still
	// running and draining their connections, oldest first: at most the
	// parent, unless Options.MaxGenerations allows more.
	Draining []int `json:"draining,omitempty"`
	// Generations lists the live generations, oldest first and this one
	// last, with their pid, age and open connections.
	Generations []GenerationInfo `json:"generations,omitempty"`
	// DrainDeadlineHits is 1 once this generation's
	// Options.DrainTimeout has passed and it was told to exit.
	DrainDeadlineHits uint64 `json:"drain_deadline_hits,omitempty"`
}

// UpgradeOutcome describes a successful upgrade.
type UpgradeOutcome struct {
	// PID and Generation of the new generation.
	PID        int    `json:"pid"`
	Generation uint64 `json:"generation"`
	// Seconds from the start of the upgrade until the new generation
	// was ready and acknowledged.
	Seconds float64 `json:"seconds"`
}

// upgradeStats holds the counters behind Stats. The run loop updates them
// (it is an observer); Stats and the control socket read them from other
// goroutines, so they are under a mutex rather than owned by the run loop:
// a status request must be answered while the run loop waits for an
// upgrade. Nothing is done under the mutex but copying.
type upgradeStats struct {
	mu sync.Mutex
	// generation is this generation's number, fixed at New.
	generation uint64
	upgrading  bool
	started    time.Time // of the upgrade under way
	attempted  uint64
	succeeded  uint64
	failed     uint64
	last       UpgradeOutcome
	lastErr    *ControlError
	lastErrAt  time.Time
}

var _ observer = (*upgradeStats)(nil)

func (s *upgradeStats) ready()               {}
func (s *upgradeStats) refused(error)        {}
func (s *upgradeStats) childStarted(pid int) {}
func (s *upgradeStats) stopping()            {}
func (s *upgradeStats) upgradeStarting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upgrading = true
	s.started = time.Now()
	s.attempted++
}

func (s *upgradeStats) upgradeDone(pid int, err error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upgrading = false
	if err != nil {
		s.failed++
		s.lastErr = controlError(err)
		s.lastErrAt = now
		return
	}
	s.succeeded++
	s.last = UpgradeOutcome{PID: pid, Generation: s.generation + 1, Seconds: now.Sub(s.started).Seconds()}
}

func (s *upgradeStats) lastUpgrade() UpgradeOutcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Generation returns who this generation is: its pid, its generation
// number, its parent's pid and when it called New (AgeSeconds and
// DrainingSince are zero, and Conns is -1: they are not fixed). These
// never change after New, so Generation costs nothing and never blocks:
// call it anywhere, in a handler or before Ready.
func (u *Upgrader) Generation() GenerationInfo {
	g := u.self
	g.Conns = -1
	return g
}

// Stats returns a snapshot of this generation's state and upgrade
// counters, and of the generations alive. It never blocks on an upgrade
// under way, and holds no lock while it counts connections.
//
// It counts each live generation's open connections (GenerationInfo.Conns,
// see there for what is counted): that costs in proportion to the
// connections this generation holds, whatever else the host holds, plus
// one round trip to each older generation that still drains (at most
// 250 ms in all, should one not answer). Generation has the fixed facts
// for nothing.
func (u *Upgrader) Stats() Stats {
	s := &u.stats
	s.mu.Lock()
	st := Stats{
		Upgrading:         s.upgrading,
		UpgradesAttempted: s.attempted,
		UpgradesSucceeded: s.succeeded,
		UpgradesFailed:    s.failed,
	}
	if s.lastErr != nil {
		e := *s.lastErr
		st.LastFailure = &e
		st.LastFailureAt = s.lastErrAt
	}
	s.mu.Unlock()
	st.PID, st.Generation, st.ParentPID, st.Started = u.self.PID, u.self.Generation, u.self.ParentPID, u.self.Started
	st.Ready = closed(u.readyC)
	st.Exiting = closed(u.exitC)
	st.Generations, st.DrainDeadlineHits = u.gens.stats(u.self, u.Fds.conns.count())
	for _, g := range st.Generations[:len(st.Generations)-1] {
		st.Draining = append(st.Draining, g.PID)
	}
	return st
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
