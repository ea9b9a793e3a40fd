package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// report is everything check found. It is printed as text or JSON and
// drawn as HTML; durations are nanoseconds in JSON.
type report struct {
	Server         string            `json:"server"`
	URLs           []string          `json:"urls"`
	Signal         string            `json:"signal"`
	Method         string            `json:"method"`
	Elapsed        time.Duration     `json:"elapsed_ns"`
	Requests       int               `json:"requests"`
	Failed         int               `json:"failed"`
	Failures       map[string]int    `json:"failures"`
	Cut            int               `json:"cut"`
	CutInFlight    int               `json:"cut_in_flight"`
	CutAfterReady  spread            `json:"cut_after_ready"`
	Examples       map[string]string `json:"failure_examples,omitempty"`
	Modes          []modeReport      `json:"modes"`
	UpgradesWanted int               `json:"upgrades_wanted,omitempty"`
	Upgrades       []upgradeReport   `json:"upgrades"`
	UpgradeToReady spread            `json:"upgrade_to_ready"`
	OldExit        spread            `json:"old_generation_exit"`
	Steady         loadgen.Latency   `json:"latency_steady"`
	During         loadgen.Latency   `json:"latency_during_upgrades"`
	First          *generation       `json:"first_generation,omitempty"`
	Last           *generation       `json:"last_generation,omitempty"`
	FDSlack        int               `json:"fd_slack"`
	Subreaper      bool              `json:"subreaper"`
	ProcessEvents  bool              `json:"process_events"` // new generations' ends are heard of, not looked for
	Leftovers      []leftover        `json:"leftovers"`
	ServerLog      string            `json:"server_log,omitempty"`
	Notes          []string          `json:"notes,omitempty"`
	Problems       []string          `json:"problems"`
	Pass           bool              `json:"pass"`
	Verdict        string            `json:"verdict"`
	results        []*loadgen.Result // for the timeline
	epoch          time.Time
}

// Cut connections.
//
// A long-lived connection that a draining generation closes is the
// drain's doing, and reported as cut: at its deadline, the drain can do
// nothing else, and a line protocol cannot tell a client to reconnect as
// HTTP's "Connection: close" does. One the server closes at another
// moment is lost. The client sees the end when the old generation's
// socket is closed, which is before the check sees that generation exit;
// endSlack allows for the client's goroutine running late.
const endSlack = 100 * time.Millisecond

type modeReport struct {
	Mode         loadgen.Mode   `json:"mode"`
	Conns        int            `json:"conns"`
	Requests     int            `json:"requests"`
	Failed       int            `json:"failed"`
	Failures     map[string]int `json:"failures"`
	Cut          int            `json:"cut,omitempty"`
	LimitReached bool           `json:"limit_reached,omitempty"`
}

// upgradeReport is one upgrade. The At fields are offsets from the start
// of the check: the signal, the new PID in the PID file, the new generation
// answering, the old generation's exit. ToReady runs from the signal to
// ready; OldExit from the new PID (when the old generation learns that its
// successor is ready and begins to drain) to the old generation's exit.
type upgradeReport struct {
	N         int           `json:"n"`
	OldPID    int           `json:"old_pid"`
	NewPID    int           `json:"new_pid,omitempty"`
	SignalAt  time.Duration `json:"signal_at_ns"`
	PIDAt     time.Duration `json:"pid_at_ns,omitempty"`
	ReadyAt   time.Duration `json:"ready_at_ns,omitempty"`
	OldExitAt time.Duration `json:"old_exit_at_ns,omitempty"`
	ToReady   time.Duration `json:"to_ready_ns,omitempty"`
	OldExit   time.Duration `json:"old_exit_ns,omitempty"`
	OldExited bool          `json:"old_exited"`
}

// end is when the upgrade stopped affecting clients: the old generation's
// exit, or, when that never came, the last moment it was watched.
func (u upgradeReport) end() time.Duration {
	return max(u.SignalAt, u.ReadyAt, u.OldExitAt)
}

type spread struct {
	Count  int           `json:"count"`
	Min    time.Duration `json:"min_ns"`
	Median time.Duration `json:"median_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
}

func spreadOf(ds []time.Duration) spread {
	if len(ds) == 0 {
		return spread{}
	}
	l := loadgen.Summarize(ds)
	return spread{Count: l.Count, Min: slices.Min(ds), Median: l.Median, P99: l.P99, Max: l.Max}
}

type generation struct {
	N   int `json:"n"`
	PID int `json:"pid"`
	// FDs counts open fds but connections, which Conns counts (see
	// fdCount); nil where that is not available.
	FDs    *int `json:"fds"`
	Conns  *int `json:"conns"`
	RSSKiB *int `json:"rss_kib"` // nil: not available on this system
}

func sampleGeneration(n, pid int) *generation {
	g := &generation{N: n, PID: pid}
	if fds, conns, ok := fdCount(pid); ok {
		fds -= conns
		g.FDs, g.Conns = &fds, &conns
	}
	if v, ok := proctree.RSSKiB(pid); ok {
		g.RSSKiB = &v
	}
	return g
}

type leftover struct {
	proctree.Stat
	What string `json:"what"`
}

func (r *report) fail(problem string) {
	r.Problems = append(r.Problems, problem)
	r.Pass = false
}

// outcome is what a record comes to in the report.
type outcome int

const (
	answered outcome = iota
	failed
	cut // ended by a draining generation
)

// classify says what rec, of a load that started at off, comes to.
func (r *report) classify(off time.Duration, rec loadgen.Record) (outcome, *upgradeReport) {
	switch {
	case rec.Outcome == loadgen.OK:
		return answered, nil
	case !rec.Ended:
		return failed, nil
	}
	t := off + rec.End()
	for i := range r.Upgrades {
		u := &r.Upgrades[i]
		if t >= u.SignalAt && t <= u.end()+endSlack {
			return cut, u
		}
	}
	return failed, nil
}

// finish computes the summary figures and the verdict from the results,
// upgrades, generations and leftovers already in r. conns is the number
// of load connections.
func (r *report) finish(conns int) {
	r.Failures = map[string]int{}
	r.Examples = map[string]string{}
	r.Requests, r.Failed, r.Cut, r.CutInFlight = 0, 0, 0, 0
	inUpgrade := func(start, end time.Duration) bool {
		for _, u := range r.Upgrades {
			if start <= u.end() && end >= u.SignalAt {
				return true
			}
		}
		return false
	}
	var steady, during, cutAfter []time.Duration
	lostConns := 0
	r.Modes = r.Modes[:0]
	for _, res := range r.results {
		off := res.Started.Sub(r.epoch)
		m := modeReport{Mode: res.Mode, Failures: map[string]int{}, LimitReached: res.LimitReached}
		for o, e := range res.Examples {
			if _, ok := r.Examples[o.String()]; !ok {
				r.Examples[o.String()] = fmt.Sprintf("%s: %s", res.Mode, e)
			}
		}
		for _, rec := range res.Records {
			if rec.Outcome != loadgen.Cut {
				m.Requests++ // a cut between exchanges is no request
			}
			switch kind, u := r.classify(off, rec); kind {
			case cut:
				m.Cut++
				r.Cut++
				if rec.Outcome != loadgen.Cut {
					r.CutInFlight++
				}
				if u.ReadyAt > 0 {
					cutAfter = append(cutAfter, max(0, off+rec.End()-u.ReadyAt))
				}
			case failed:
				if rec.Outcome == loadgen.Cut {
					lostConns++
				} else {
					m.Failed++
				}
				m.Failures[rec.Outcome.String()]++
				r.Failures[rec.Outcome.String()]++
			default:
				if inUpgrade(off+rec.Start, off+rec.End()) {
					during = append(during, rec.Latency)
				} else {
					steady = append(steady, rec.Latency)
				}
			}
		}
		m.Conns = conns / max(1, len(r.results))
		r.Requests += m.Requests
		r.Failed += m.Failed
		if m.LimitReached {
			r.Notes = append(r.Notes, fmt.Sprintf("the %s load stopped early at its request limit (-max-requests)", m.Mode))
		}
		r.Modes = append(r.Modes, m)
	}
	r.Steady = loadgen.Summarize(steady)
	r.During = loadgen.Summarize(during)
	r.CutAfterReady = spreadOf(cutAfter)

	var toReady, oldExit []time.Duration
	for _, u := range r.Upgrades {
		if u.NewPID != 0 {
			toReady = append(toReady, u.ToReady)
		}
		if u.OldExited {
			oldExit = append(oldExit, u.OldExit)
		}
	}
	r.UpgradeToReady = spreadOf(toReady)
	r.OldExit = spreadOf(oldExit)

	r.Pass = len(r.Problems) == 0
	if r.Failed > 0 {
		r.fail(fmt.Sprintf("%d of %d requests failed", r.Failed, r.Requests))
	}
	if lostConns > 0 {
		r.fail(plural(lostConns, "long-lived connection", "long-lived connections") + " closed by the server outside any upgrade")
	}
	if r.Requests == 0 {
		r.fail("no request was made")
	}
	if len(r.Leftovers) > 0 {
		r.fail(plural(len(r.Leftovers), "process", "processes") + " left behind")
	}
	if r.First != nil && r.Last != nil && r.First.FDs != nil && r.Last.FDs != nil && r.Last.PID != r.First.PID &&
		*r.Last.FDs > *r.First.FDs+r.FDSlack {
		r.fail(fmt.Sprintf("open fds other than connections grew from %d in generation %d to %d in generation %d (-fd-slack %d)",
			*r.First.FDs, r.First.N, *r.Last.FDs, r.Last.N, r.FDSlack))
	}
	r.setVerdict()
}

func (r *report) setVerdict() {
	switch {
	case !r.Pass:
		r.Verdict = "FAIL: " + strings.Join(r.Problems, "; ")
	case r.Cut > 0:
		r.Verdict = fmt.Sprintf("PASS: nothing lost outside the drain, nothing left behind; draining generations cut %s (%d with a line in flight)",
			plural(r.Cut, "long-lived connection", "long-lived connections"), r.CutInFlight)
	default:
		r.Verdict = "PASS: no request lost, nothing left behind"
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func (s spread) String() string {
	if s.Count == 0 {
		return "n/a"
	}
	return fmt.Sprintf("min %s  median %s  p99 %s  max %s  (%d)", fmtDur(s.Min), fmtDur(s.Median), fmtDur(s.P99), fmtDur(s.Max), s.Count)
}

func latencyString(l loadgen.Latency) string {
	if l.Count == 0 {
		return "n/a"
	}
	return fmt.Sprintf("median %s  p99 %s  max %s  (%d requests)", fmtDur(l.Median), fmtDur(l.P99), fmtDur(l.Max), l.Count)
}

func (g *generation) String() string {
	if g == nil {
		return "n/a"
	}
	fds, rss := "n/a", "n/a"
	if g.FDs != nil {
		fds = fmt.Sprint(*g.FDs)
		if g.Conns != nil && *g.Conns > 0 {
			fds += fmt.Sprintf(" (and %d connections)", *g.Conns)
		}
	}
	if g.RSSKiB != nil {
		rss = fmt.Sprintf("%.1f MiB", float64(*g.RSSKiB)/1024)
	}
	return fmt.Sprintf("generation %d, pid %d: %s fds, RSS %s", g.N, g.PID, fds, rss)
}

// failureKinds returns the kinds in m in the order of loadgen.Outcomes.
func failureKinds(m map[string]int) []loadgen.Outcome {
	var out []loadgen.Outcome
	for _, o := range loadgen.Outcomes() {
		if m[o.String()] > 0 {
			out = append(out, o)
		}
	}
	return out
}

func (r *report) writeText(w io.Writer) {
	fmt.Fprintf(w, "tableflip check: %s\n", r.Server)
	load := strings.Join(r.URLs, " ")
	if r.Method != "" {
		load = r.Method + " " + load
	}
	fmt.Fprintf(w, "  load               %s, upgrade signal %s, took %s\n", load, r.Signal, fmtDur(r.Elapsed))
	fmt.Fprintf(w, "  requests           %d sent, %d failed\n", r.Requests, r.Failed)
	for _, m := range r.Modes {
		cut := ""
		if m.Cut > 0 {
			cut = fmt.Sprintf(", %d connections cut by the drain", m.Cut)
		}
		fmt.Fprintf(w, "    %-9s x%-3d    %d sent, %d failed%s\n", m.Mode, m.Conns, m.Requests, m.Failed, cut)
	}
	for _, o := range failureKinds(r.Failures) {
		fmt.Fprintf(w, "    %-10s %7d  %s\n", o, r.Failures[o.String()], o.Describe())
		if e := r.Examples[o.String()]; e != "" {
			fmt.Fprintf(w, "    %-10s          e.g. %s\n", "", e)
		}
	}
	done := 0
	for _, u := range r.Upgrades {
		if u.NewPID != 0 {
			done++
		}
	}
	want := ""
	if r.UpgradesWanted > 0 {
		want = fmt.Sprintf(" of %d", r.UpgradesWanted)
	}
	if r.Cut > 0 {
		fmt.Fprintf(w, "  cut by the drain   %s closed by draining generations, %d with a line in flight\n", plural(r.Cut, "long-lived connection", "long-lived connections"), r.CutInFlight)
		fmt.Fprintf(w, "    after ready      %s\n", r.CutAfterReady)
	}
	fmt.Fprintf(w, "  upgrades           %d%s done\n", done, want)
	fmt.Fprintf(w, "  upgrade to ready   %s\n", r.UpgradeToReady)
	fmt.Fprintf(w, "  old gen exit       %s\n", r.OldExit)
	fmt.Fprintf(w, "  latency steady     %s\n", latencyString(r.Steady))
	fmt.Fprintf(w, "  latency upgrading  %s\n", latencyString(r.During))
	fmt.Fprintf(w, "  first generation   %s\n", r.First)
	fmt.Fprintf(w, "  last generation    %s\n", r.Last)
	switch {
	case len(r.Leftovers) > 0:
		fmt.Fprintf(w, "  leftovers          %d\n", len(r.Leftovers))
		for _, l := range r.Leftovers {
			fmt.Fprintf(w, "    pid %d (state %s, parent %d) %s: %s\n", l.PID, l.State, l.PPID, l.What, l.Cmd)
		}
	case r.Subreaper:
		fmt.Fprintf(w, "  leftovers          none (no zombies, no stray processes)\n")
	default:
		fmt.Fprintf(w, "  leftovers          none seen (old generations exited; zombie scan n/a on this system)\n")
	}
	if r.ServerLog != "" {
		fmt.Fprintf(w, "  server output      %s\n", r.ServerLog)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	fmt.Fprintf(w, "verdict: %s\n", r.Verdict)
}

// plural returns "1 process" or "2 processes".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
