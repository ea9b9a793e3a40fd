package tableflip

import (
	"errors"
	"os"
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
	// last, with their pid and age. Connection counts are not given:
	// the library does not see the program's connections.
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

// upgradeStats holds the numbers behind Stats. The run loop updates them;
// Stats and the control socket read them from other goroutines, so they
// are under a mutex rather than owned by the run loop: a status request
// must be answered while the run loop waits for an upgrade.
type upgradeStats struct {
	mu         sync.Mutex
	generation uint64
	started    time.Time
	upgrading  bool
	attempted  uint64
	succeeded  uint64
	failed     uint64
	last       UpgradeOutcome
	lastErr    *ControlError
	lastErrAt  time.Time
}

// initStats records who this generation is.
func (u *Upgrader) initStats() {
	u.stats.generation = inheritedGeneration(u.parent) + 1
	u.stats.started = time.Now()
	u.initGenerations()
}

// upgradeStarted is called by the run loop as an upgrade begins.
func (s *upgradeStats) upgradeStarted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upgrading = true
	s.attempted++
}

// upgradeFinished is called by the run loop with the outcome of the
// upgrade that began at start; childPID is the new generation's pid.
func (s *upgradeStats) upgradeFinished(err error, childPID int, start time.Time) {
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
	s.last = UpgradeOutcome{PID: childPID, Generation: s.generation + 1, Seconds: now.Sub(start).Seconds()}
}

func (s *upgradeStats) lastUpgrade() UpgradeOutcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Stats returns a snapshot of this generation's state and upgrade counters.
// It never blocks on an upgrade under way.
func (u *Upgrader) Stats() Stats {
	st := Stats{PID: os.Getpid(), Ready: closed(u.readyC), Exiting: closed(u.exitC)}
	if u.parent != nil {
		st.ParentPID = u.parent.pid
		if !closed(u.parent.exited) {
			st.Draining = []int{u.parent.pid}
		}
	}
	s := &u.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Generation = s.generation
	st.Started = s.started
	st.Upgrading = s.upgrading
	st.UpgradesAttempted = s.attempted
	st.UpgradesSucceeded = s.succeeded
	st.UpgradesFailed = s.failed
	if s.lastErr != nil {
		e := *s.lastErr
		st.LastFailure = &e
		st.LastFailureAt = s.lastErrAt
	}
	u.generationStats(&st)
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

// reason names the kind of an error from Upgrade for the control protocol
// and Stats.
func reason(err error) string {
	for _, r := range []struct {
		err    error
		reason string
	}{
		{ErrNotSupported, ReasonNotSupported},
		{ErrNotReady, ReasonNotReady},
		{ErrUpgradeInProgress, ReasonInProgress},
		{ErrParentRunning, ReasonParentRunning},
		{ErrTooManyGenerations, ReasonTooMany},
		{ErrUpgraded, ReasonUpgraded},
		{ErrTimeout, ReasonTimeout},
		{ErrChildExited, ReasonChildExited},
		{ErrHandover, ReasonHandover},
		// Last: an upgrade cut short by Stop is a *ChildError wrapping
		// ErrStopped, and says stopped.
		{ErrStopped, ReasonStopped},
	} {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ReasonFailed
}

// controlError describes an error from Upgrade.
func controlError(err error) *ControlError {
	e := &ControlError{Reason: reason(err), Message: err.Error()}
	var ce *ChildError
	if errors.As(err, &ce) {
		e.PID = ce.PID
		code := ce.ExitCode
		e.ExitCode = &code
		if ce.Signal != 0 {
			e.Signal = signalName(ce.Signal)
		}
	}
	return e
}
