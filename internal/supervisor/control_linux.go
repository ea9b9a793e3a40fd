package supervisor

import (
	"context"
	"time"

	"github.com/seed589fcc9d/tableflip"
)

// The control socket: the supervisor is a tableflip.ControlHandler, so
// the library serves the protocol (tableflip upgrade and status, and
// ControlCall, are its clients) and the supervisor answers.
var _ tableflip.ControlHandler = (*supervisor)(nil)

// Upgrade asks the loop for an upgrade and waits for its outcome.
func (s *supervisor) Upgrade(ctx context.Context) (tableflip.UpgradeOutcome, error) {
	reply := make(chan upgradeResult, 1)
	select {
	case s.events <- upgradeEvent{reply: reply, by: "control socket"}:
	case <-s.quit:
		return tableflip.UpgradeOutcome{}, tableflip.ErrStopped
	case <-ctx.Done():
		return tableflip.UpgradeOutcome{}, tableflip.ErrStopped
	}
	select {
	case r := <-reply:
		return r.out, r.err
	case <-s.quit:
		return tableflip.UpgradeOutcome{}, tableflip.ErrStopped
	case <-ctx.Done():
		return tableflip.UpgradeOutcome{}, tableflip.ErrStopped
	}
}

// Status answers "status": PID is the supervisor's, which never changes;
// Generation the serving generation's number; Generations the program's
// generations alive, draining ones first and the serving one last
// (ParentPID the supervisor); Draining their pids. Conns is -1: the
// supervisor does not count a program's connections.
func (s *supervisor) Status() tableflip.Stats {
	s.mu.Lock()
	st := s.snap
	st.Generations = append([]tableflip.GenerationInfo(nil), st.Generations...)
	st.Draining = append([]int(nil), st.Draining...)
	if st.LastFailure != nil {
		e := *st.LastFailure
		st.LastFailure = &e
	}
	s.mu.Unlock()
	now := time.Now()
	for i := range st.Generations {
		st.Generations[i].AgeSeconds = now.Sub(st.Generations[i].Started).Seconds()
	}
	return st
}

// publish makes the loop's state what Status answers. Only the loop
// calls it.
func (s *supervisor) publish() {
	st := tableflip.Stats{
		PID:               s.pid,
		Generation:        s.lastN,
		Started:           s.started,
		Ready:             s.serving != nil,
		Upgrading:         s.starting != nil && s.starting.why == kindUpgrade,
		Exiting:           s.stopping,
		UpgradesAttempted: s.attempted,
		UpgradesSucceeded: s.succeeded,
		UpgradesFailed:    s.failed,
		LastFailure:       s.lastErr,
		LastFailureAt:     s.lastErrAt,
	}
	add := func(g *generation) {
		st.Generations = append(st.Generations, tableflip.GenerationInfo{
			PID: g.PID, Generation: g.N, ParentPID: s.pid, Started: g.Started,
			DrainingSince: g.DrainingSince, Conns: -1,
		})
	}
	for _, g := range s.gens {
		if g.St == draining {
			add(g)
			st.Draining = append(st.Draining, g.PID)
		}
	}
	if s.serving != nil {
		add(s.serving)
	}
	s.mu.Lock()
	s.snap = st
	s.mu.Unlock()
}
