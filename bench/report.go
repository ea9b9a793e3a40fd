//go:build linux

package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// stats is min, median and p99 (nearest rank) of some durations.
type stats struct {
	N                int
	Min, Median, P99 time.Duration
}

func summarize(ds []time.Duration) stats {
	if len(ds) == 0 {
		return stats{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return stats{N: len(s), Min: s[0], Median: loadgen.Percentile(s, 50), P99: loadgen.Percentile(s, 99)}
}

func readyOf(rs []upgradeResult) []time.Duration {
	out := make([]time.Duration, len(rs))
	for i, r := range rs {
		out[i] = r.Ready
	}
	return out
}

func seenOf(rs []upgradeResult) []time.Duration {
	out := make([]time.Duration, len(rs))
	for i, r := range rs {
		out[i] = r.Seen
	}
	return out
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func ms3(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/1e6) }

// ratio formats ours/theirs.
func ratio(ours, theirs float64) string {
	switch {
	case ours == 0 && theirs == 0:
		return "— (both 0)"
	case theirs == 0:
		return "∞"
	}
	return fmt.Sprintf("%.2fx", ours/theirs)
}

// table writes a markdown table with a row label, one column per
// implementation and our ratio to the other two.
type table struct {
	b *strings.Builder
}

func newTable(b *strings.Builder, label string) *table {
	fmt.Fprintf(b, "| %s | ours | tableflip v1.2.3 | floor | ours ÷ tableflip | ours ÷ floor |\n", label)
	b.WriteString("|---|---:|---:|---:|---:|---:|\n")
	return &table{b: b}
}

// row writes one row; v holds the values of ours, tableflip and floor,
// f formats them.
func (t *table) row(label string, v map[string]float64, f func(float64) string) {
	fmt.Fprintf(t.b, "| %s | %s | %s | %s | %s | %s |\n", label,
		f(v[implOurs]), f(v[implTableflip]), f(v[implFloor]),
		ratio(v[implOurs], v[implTableflip]), ratio(v[implOurs], v[implFloor]))
}

func durf(x float64) string { return ms(time.Duration(x)) }

// statRows writes min, median and p99 rows for a set of upgrades.
func statRows(t *table, prefix string, per map[string][]time.Duration) map[string]stats {
	st := map[string]stats{}
	for impl, ds := range per {
		st[impl] = summarize(ds)
	}
	pick := func(f func(stats) time.Duration) map[string]float64 {
		m := map[string]float64{}
		for impl, s := range st {
			m[impl] = float64(f(s))
		}
		return m
	}
	t.row(prefix+"min", pick(func(s stats) time.Duration { return s.Min }), durf)
	t.row(prefix+"median", pick(func(s stats) time.Duration { return s.Median }), durf)
	t.row(prefix+"p99", pick(func(s stats) time.Duration { return s.P99 }), durf)
	return st
}

func perImpl(rs map[string][]upgradeResult, f func([]upgradeResult) []time.Duration) map[string][]time.Duration {
	m := map[string][]time.Duration{}
	for impl, r := range rs {
		m[impl] = f(r)
	}
	return m
}

func (r *results) markdown() string {
	var b strings.Builder
	c := r.cfg
	m := r.machine
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Written by the `bench` module (`bench/`), which builds one sample HTTP server three ways in one binary and upgrades each in turn:\n\n")
	b.WriteString("- **ours**: this module's `Upgrader`, with `drain.Server` draining the old generation;\n")
	b.WriteString("- **tableflip v1.2.3**: `github.com/cloudflare/tableflip` from the Go module proxy, written as its README shows (SIGHUP → `Upgrade`, `http.Server.Shutdown` once `Exit` is closed);\n")
	b.WriteString("- **floor**: the least an upgrade can do: the process re-executes itself with its listening sockets as fds 3, 4, … (duplicated with `F_DUPFD_CLOEXEC`, passed with `syscall.ForkExec`) and a pipe on which the new process writes one byte when ready; no names, no checks; `http.Server.Shutdown` after the upgrade.\n\n")
	b.WriteString("Every generation of every implementation runs the same handler and is upgraded the same way: the runner sends SIGHUP, the signal goroutine calls the implementation's upgrade and reports over a control socket. Implementations alternate upgrade by upgrade (figures 1, 2, 5) or load segment by load segment (figures 3, 4), each on its own loopback address, so that a noisy moment on the machine hits all three alike. The machine is shared and noisy: the ratios mean more than the absolute numbers.\n\n")

	b.WriteString("## Machine and command\n\n")
	fmt.Fprintf(&b, "- cores: %d (%s)\n- kernel: %s\n- Go: %s\n- RLIMIT_NOFILE: %d\n- load average at the start: %s\n", m.Cores, m.Model, m.Kernel, m.Go, m.NoFile, m.Loadavg)
	fmt.Fprintf(&b, "- command: `%s`\n", c.command())
	fmt.Fprintf(&b, "- run started %s, took %s\n\n", r.started.UTC().Format(time.RFC3339), r.took.Round(time.Second))
	if c.quick {
		b.WriteString("This is a **-quick** run: fewer upgrades than the issue asks for; run without -quick for the full numbers.\n\n")
	}

	// Figure 1.
	b.WriteString("## 1. Upgrade to ready, no application initialisation\n\n")
	b.WriteString("**Upgrade to ready** is measured inside the old generation, identically for all three: from just before the call that starts the new generation (`Upgrade()` for ours and tableflip, the floor's fork/exec function) to its return, which is when the old process has learnt that the new generation is ready (ours: the child's ready frame, answered by the ack; tableflip: the child's readiness on its pipe; floor: the byte on the ready pipe). The new generation listens on one socket and initialises nothing else. Before the timed call, ours and tableflip wait in WaitForParent until they have seen their own parent exit (both refuse to upgrade before), which is not timed; the runner starts an upgrade only once the previous generation has been reaped.\n\n")
	fmt.Fprintf(&b, "%d upgrades per implementation (after 3 warm ones).\n\n", c.upgrades)
	t := newTable(&b, "upgrade to ready")
	st1 := statRows(t, "", perImpl(r.ready, readyOf))
	seen := summarizeMap(perImpl(r.ready, seenOf))
	t.row("median as the runner sees it (SIGHUP to report)", medians(seen), durf)
	b.WriteString("\n")

	// Figure 2.
	b.WriteString("## 2. Upgrade to ready with inherited listening sockets\n\n")
	fmt.Fprintf(&b, "The server listens on N idle loopback ports besides its HTTP one, every generation; %d upgrades per implementation and N (after 2 warm ones).\n\n", c.socketUpgrades)
	t = newTable(&b, "upgrade to ready")
	st2 := map[int]map[string]stats{}
	for _, s := range r.sockets {
		st2[s.N] = statRows(t, fmt.Sprintf("N=%d ", s.N), perImpl(s.Ready, readyOf))
	}
	b.WriteString("\n")

	// Figure 3.
	b.WriteString("## 3. Failed requests during upgrades under load\n\n")
	fmt.Fprintf(&b, "%d clients on loopback (`internal/loadgen`, which never retries except inside Go's own client), %d upgrades per implementation and mode, back to back, in segments of %d upgrades with the implementations alternating. Each upgrade waits until the old generation has exited before the next one starts. A cell is failed requests / requests.\n\n", c.conns, c.loadUpgrades, c.segment)
	b.WriteString("| client mode | ours | tableflip v1.2.3 | floor | ours ÷ tableflip | ours ÷ floor |\n|---|---:|---:|---:|---:|---:|\n")
	for _, lr := range r.load {
		cell := func(impl string) string {
			a := lr.Per[impl]
			return fmt.Sprintf("%d / %d (%.2f per upgrade)", a.failed(), a.Requests, float64(a.failed())/float64(max(1, a.Upgrades)))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", lr.Mode.Name, cell(implOurs), cell(implTableflip), cell(implFloor),
			ratio(float64(lr.Per[implOurs].failed()), float64(lr.Per[implTableflip].failed())),
			ratio(float64(lr.Per[implOurs].failed()), float64(lr.Per[implFloor].failed())))
	}
	b.WriteString("\nHow they failed (first example of each kind):\n\n")
	for _, lr := range r.load {
		for _, impl := range impls {
			a := lr.Per[impl]
			if a.failed() == 0 {
				continue
			}
			fmt.Fprintf(&b, "- %s, %s:", lr.Mode.Name, impl)
			for _, o := range loadgen.Outcomes() {
				if n := a.Failed[o]; n > 0 {
					fmt.Fprintf(&b, " %d %s (%q);", n, o, a.Examples[o])
				}
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n")

	// Figure 4.
	b.WriteString("## 4. Request latency and throughput: steady state and upgrade storm\n\n")
	fmt.Fprintf(&b, "Keep-alive clients (%d). Steady state: %d s of load per implementation with no upgrade, in three alternating segments. Storm: the keep-alive segments of figure 3 (upgrades back to back). Latencies of successful requests.\n\n", c.conns, c.steady)
	t = newTable(&b, "")
	lat := func(src map[string]*latencies, p float64) map[string]float64 {
		out := map[string]float64{}
		for impl, l := range src {
			s := slices.Clone(l.all)
			slices.Sort(s)
			out[impl] = float64(loadgen.Percentile(s, p))
		}
		return out
	}
	rps := func(src map[string]*latencies) map[string]float64 {
		out := map[string]float64{}
		for impl, l := range src {
			out[impl] = l.rps()
		}
		return out
	}
	rpsf := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	t.row("steady p50", lat(r.steady, 50), durf)
	t.row("steady p99", lat(r.steady, 99), durf)
	t.row("storm p50", lat(r.storm, 50), durf)
	t.row("storm p99", lat(r.storm, 99), durf)
	t.row("steady requests/s", rps(r.steady), rpsf)
	t.row("storm requests/s", rps(r.storm), rpsf)
	b.WriteString("\n")

	// Figure 5.
	b.WriteString("## 5. Open fds and RSS, first generation against last\n\n")
	gens := 0
	if f := r.footprint[implOurs]; f != nil {
		gens = f.Gens
	}
	fmt.Fprintf(&b, "%d upgrades per implementation, alternating; each generation sampled from /proc once ready, its parent reaped, and 300 ms later. Generation 1 has no parent at all; generation 2 is the first one started by an upgrade.\n\n", c.footprint)
	t = newTable(&b, "")
	fp := func(f func(*footprint) float64) map[string]float64 {
		out := map[string]float64{}
		for impl, x := range r.footprint {
			out[impl] = f(x)
		}
		return out
	}
	intf := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	mib := func(x float64) string { return fmt.Sprintf("%.1f MiB", x/(1<<20)) }
	t.row("fds, generation 1", fp(func(f *footprint) float64 { return float64(f.First.FDs) }), intf)
	t.row("fds, generation 2", fp(func(f *footprint) float64 { return float64(f.Second.FDs) }), intf)
	t.row(fmt.Sprintf("fds, generation %d", gens), fp(func(f *footprint) float64 { return float64(f.Last.FDs) }), intf)
	t.row("RSS, generation 1", fp(func(f *footprint) float64 { return float64(f.First.RSS) }), mib)
	t.row("RSS, generation 2", fp(func(f *footprint) float64 { return float64(f.Second.RSS) }), mib)
	t.row(fmt.Sprintf("RSS, generation %d", gens), fp(func(f *footprint) float64 { return float64(f.Last.RSS) }), mib)
	b.WriteString("\n")

	// Figure 6.
	runMedian := r.runFigure(&b)

	// Targets.
	b.WriteString("## Targets of issue 5\n\n")
	b.WriteString("Judged from this run, as measured; a miss is a miss.\n\n")
	b.WriteString("| target | measured | verdict |\n|---|---|---|\n")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	var failedTotal, failedModes []string
	allZero := true
	for _, lr := range r.load {
		n := lr.Per[implOurs].failed()
		failedTotal = append(failedTotal, fmt.Sprintf("%s: %d", lr.Mode.Name, n))
		if n > 0 {
			allZero = false
			failedModes = append(failedModes, lr.Mode.Name)
		}
	}
	fmt.Fprintf(&b, "| failed requests: 0 in every mode | %s | %s |\n", strings.Join(failedTotal, "; "), verdict(allZero))
	var notes []string
	o, tf, fl := st1[implOurs].Median, st1[implTableflip].Median, st1[implFloor].Median
	fmt.Fprintf(&b, "| upgrade to ready within 1.1x of the floor (median) | %s vs %s: %.3fx | %s |\n", ms3(o), ms3(fl), float64(o)/float64(fl), verdict(float64(o) <= 1.1*float64(fl)))
	if float64(o) > 1.1*float64(fl) {
		notes = append(notes, fmt.Sprintf("Upgrade to ready, no sockets: ours takes %s more than the floor at the median. %s", ms3(o-fl), r.syscallDiff(0, implFloor)))
	}
	fmt.Fprintf(&b, "| upgrade to ready never slower than tableflip (median) | %s vs %s: %.3fx | %s |\n", ms3(o), ms3(tf), float64(o)/float64(tf), verdict(o <= tf))
	if o > tf {
		notes = append(notes, fmt.Sprintf("Upgrade to ready, no sockets: ours takes %s more than tableflip at the median. %s", ms3(o-tf), r.syscallDiff(0, implTableflip)))
	}
	if s, ok := st2[4000]; ok {
		o, tf, fl := s[implOurs].Median, s[implTableflip].Median, s[implFloor].Median
		fmt.Fprintf(&b, "| 4000 sockets: at most half of tableflip's time (median) | %s vs %s: %s | %s |\n", ms(o), ms(tf), ratio(float64(o), float64(tf)), verdict(2*o <= tf))
		if 2*o > tf && 2*fl > tf {
			notes = append(notes, fmt.Sprintf("4000 sockets: half of tableflip's median is %s, below the floor's own %s (%s of tableflip). The floor passes the same sockets by fork/exec with no names and no checks, so the part of the time that no handover protocol can remove is the new generation turning each inherited descriptor into a net.Listener (net.FileListener: dup, getsockopt, getsockname, getpeername, fcntl, epoll_ctl, close; see the per-socket syscall counts below), which every implementation here does for all 4000 because the server Listens on all of them.", ms(tf/2), ms(fl), ratio(float64(fl), float64(tf))))
		}
	}
	if f := r.footprint[implOurs]; f != nil {
		growth := float64(f.Last.RSS-f.First.RSS) / float64(f.First.RSS)
		fmt.Fprintf(&b, "| no growth of fds over %d upgrades | %d → %d | %s |\n", c.footprint, f.First.FDs, f.Last.FDs, verdict(f.Last.FDs <= f.First.FDs))
		fmt.Fprintf(&b, "| no growth of memory over %d upgrades (RSS within 10%%: Go's RSS moves by a few hundred KiB with GC timing) | %s → %s (%+.1f%%) | %s |\n", c.footprint, mib(float64(f.First.RSS)), mib(float64(f.Last.RSS)), 100*growth, verdict(growth <= 0.10))
	}
	if s := r.steady; s[implOurs] != nil && s[implFloor] != nil && s[implTableflip] != nil {
		o, fl, tf := s[implOurs].rps(), s[implFloor].rps(), s[implTableflip].rps()
		fmt.Fprintf(&b, "| drain costs at most 3%% of requests/s in steady state (against the bare `http.Server` of floor and tableflip) | %.0f vs %.0f and %.0f: %s, %s | %s |\n", o, fl, tf, ratio(o, fl), ratio(o, tf), verdict(o >= 0.97*fl && o >= 0.97*tf))
		notes = append(notes, fmt.Sprintf("Steady requests/s: tableflip and floor serve with the same bare http.Server in steady state, so the gap between them (%s) is this machine's noise for that figure; a 3%% difference is only resolved when that gap is well under 3%%.", ratio(tf, fl)))
		if len(r.profiles) > 0 {
			notes[len(notes)-1] += " The CPU profiles below show what each server spends its time on, and how much of it is in package drain."
		}
	}
	if runMedian > 0 {
		fmt.Fprintf(&b, "| `tableflip run`: upgrade to ready within 1.2x of the library's own, same program (median, figure 6) | %.3fx | %s |\n", runMedian, verdict(runMedian <= 1.2))
	}
	b.WriteString("\n")
	for _, n := range notes {
		b.WriteString(n + "\n\n")
	}
	if len(failedModes) > 0 {
		fmt.Fprintf(&b, "Requests were lost by ours in: %s. The kinds of failure are listed under figure 3.\n\n", strings.Join(failedModes, ", "))
	}

	// Syscalls.
	if len(r.strace) > 0 {
		b.WriteString("## Where the time goes: syscalls of one upgrade\n\n")
		b.WriteString("`strace -c -f -p <old generation>` attached for one upgrade (after a warm one): the old generation from the signal to its exit, and the new one from its fork until 200 ms after it was ready. System time per syscall, top rows by time; the tracer slows everything, so only the counts and their proportions mean anything.\n\n")
		b.WriteString("| idle sockets | ours | tableflip v1.2.3 | floor |\n|---:|---:|---:|---:|\n")
		rows := map[int]map[string]string{}
		var order []int
		for _, s := range r.strace {
			if rows[s.Sockets] == nil {
				rows[s.Sockets] = map[string]string{}
				order = append(order, s.Sockets)
			}
			calls := straceTotal(s.Summary)
			cell := "?"
			if calls > 0 {
				cell = fmt.Sprintf("%d syscalls", calls)
				if s.Sockets > 0 {
					cell += fmt.Sprintf(" (%.1f per socket)", float64(calls)/float64(s.Sockets))
				}
			}
			rows[s.Sockets][s.Impl] = cell
		}
		for _, n := range order {
			fmt.Fprintf(&b, "| %d | %s | %s | %s |\n", n, rows[n][implOurs], rows[n][implTableflip], rows[n][implFloor])
		}
		b.WriteString("\n")
		for _, s := range r.strace {
			fmt.Fprintf(&b, "### %s, %d idle sockets\n\n", s.Impl, s.Sockets)
			if s.Err != "" {
				fmt.Fprintf(&b, "strace failed: %s\n\n", s.Err)
				continue
			}
			b.WriteString("```\n" + s.Summary + "\n```\n\n")
		}
	}
	if len(r.profiles) > 0 {
		b.WriteString("## Where the time goes: CPU profile of each server in steady state\n\n")
		fmt.Fprintf(&b, "`go tool pprof -top` of a 3 s CPU profile of the serving generation under the keep-alive load of figure 4 (%d clients; the load generator runs on the same cores).\n\n", c.conns)
		for _, p := range r.profiles {
			fmt.Fprintf(&b, "### %s\n\n", p.Impl)
			if p.Err != "" {
				fmt.Fprintf(&b, "profile failed: %s\n\n", p.Err)
				continue
			}
			b.WriteString("```\n" + p.Top + "\n```\n\n")
		}
	}
	for _, n := range r.notes {
		b.WriteString(n + "\n\n")
	}
	return b.String()
}

// syscallDiff says which syscalls ours makes more of than the floor in the
// traced upgrade with n idle sockets.
func (r *results) syscallDiff(n int, other string) string {
	var ours, floor map[string]int
	for _, s := range r.strace {
		if s.Sockets != n || s.Err != "" {
			continue
		}
		switch s.Impl {
		case implOurs:
			ours = s.Calls
		case other:
			floor = s.Calls
		}
	}
	if ours == nil || floor == nil {
		return ""
	}
	type d struct {
		name string
		n    int
	}
	var ds []d
	total := 0
	for name, c := range ours {
		if c > floor[name] {
			ds = append(ds, d{name, c - floor[name]})
		}
		total += c
	}
	for _, c := range floor {
		total -= c
	}
	slices.SortFunc(ds, func(a, b d) int { return b.n - a.n })
	var parts []string
	for _, x := range ds[:min(8, len(ds))] {
		parts = append(parts, fmt.Sprintf("%s +%d", x.name, x.n))
	}
	why := "Ours hands over on a Unix socket (hello frame, descriptors in SCM_RIGHTS messages, ready frame, acknowledgement, the new generation's check of its parent), with Go runtime wake-ups (futex, nanosleep) around each round trip"
	if other == implFloor {
		why += "; the floor has one pipe byte."
	} else {
		why += "; tableflip passes its descriptors as exec'd fds and readiness as a pipe close."
	}
	return fmt.Sprintf("In the traced upgrades below (old and new generation together, one upgrade each, so a count of a few is noise) ours makes %+d syscalls against %s; the most extra: %s. %s", total, other, strings.Join(parts, ", "), why)
}

// straceTotal returns the total number of calls in a strace -c table.
func straceTotal(summary string) int {
	for _, l := range strings.Split(summary, "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[len(f)-1] == "total" {
			n, _ := strconv.Atoi(f[3])
			return n
		}
	}
	return 0
}

func summarizeMap(m map[string][]time.Duration) map[string]stats {
	out := map[string]stats{}
	for k, v := range m {
		out[k] = summarize(v)
	}
	return out
}

func medians(m map[string]stats) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		out[k] = float64(v.Median)
	}
	return out
}

// runFigure writes figure 6 and returns the ratio of the medians as the
// client sees them (run ÷ library), 0 if it was not measured.
func (r *results) runFigure(b *strings.Builder) float64 {
	if len(r.run[runLibrary]) == 0 || len(r.run[runRun]) == 0 {
		return 0
	}
	b.WriteString("## 6. `tableflip run` against the library's own upgrade, same program\n\n")
	fmt.Fprintf(b, "The README's program (examples/server), built as it stands, runs alone (its Upgrader starts a new process of itself, which inherits the socket over the handover) and under `tableflip run -listen` (the supervisor starts the new generation with the socket it holds; the program takes it by socket activation and says READY=1). Each is upgraded through its control socket as `tableflip upgrade` does, strictly alternately, %d times after 3 warm ones; each upgrade waits until the old generation has exited. Then `run` is upgraded back to back, half as many times: the supervisor starts the process of the next generation (its zygote, a copy of itself that execs the program with LISTEN_PID set) once the last one is ready, so an upgrade that follows within a few milliseconds waits for that start. **Seen** is from the request to the answer at the client; **reported** is the answer's own `seconds` (the library: from the start of the upgrade to the new generation's acknowledged readiness; `run`: from the start of the new generation to its READY=1).\n\n", r.cfg.runUpgrades)
	b.WriteString("| upgrade to ready | library | tableflip run | run ÷ library | run, back to back | back to back ÷ library |\n|---|---:|---:|---:|---:|---:|\n")
	get := func(impl string, f func(runResult) time.Duration) stats {
		var ds []time.Duration
		for _, x := range r.run[impl] {
			ds = append(ds, f(x))
		}
		return summarize(ds)
	}
	seen := func(x runResult) time.Duration { return x.Seen }
	reported := func(x runResult) time.Duration { return x.Report }
	var median float64
	for _, row := range []struct {
		label string
		f     func(runResult) time.Duration
	}{{"seen", seen}, {"reported", reported}} {
		l, u, bb := get(runLibrary, row.f), get(runRun, row.f), get(runBackToBack, row.f)
		for _, q := range []struct {
			name     string
			l, u, bb time.Duration
		}{{"min", l.Min, u.Min, bb.Min}, {"median", l.Median, u.Median, bb.Median}, {"p99", l.P99, u.P99, bb.P99}} {
			fmt.Fprintf(b, "| %s %s | %s | %s | %s | %s | %s |\n", row.label, q.name, ms(q.l), ms(q.u),
				ratio(float64(q.u), float64(q.l)), ms(q.bb), ratio(float64(q.bb), float64(q.l)))
		}
		if row.label == "seen" {
			median = float64(u.Median) / float64(l.Median)
		}
	}
	b.WriteString("\n")
	return median
}
