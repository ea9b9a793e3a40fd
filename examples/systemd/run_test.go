//go:build linux

package systemd_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/realsystemd"
)

// runUnitPrefix starts the names of the units whose ExecStart is
// tableflip run.
const runUnitPrefix = "server-run"

// runReloads is how many reloads each unit of tableflip run gets, under a
// request loop.
const runReloads = 20

// TestRunUnits runs the units of tableflip run (server-run*.service) under
// each systemd, with the README's program as the supervised program: 20
// reloads under a request loop never move MainPID (the supervisor's) and
// lose no request; a failing new generation leaves the old one serving
// and makes systemctl reload fail where the unit can say so
// (server-run-control.service); restart and stop drain (Result=success,
// the main process exits 0, no SIGKILL, nothing left in the cgroup).
func TestRunUnits(t *testing.T) {
	realsystemd.Need(t)
	built := buildBinaries(t)
	units, err := filepath.Glob(runUnitPrefix + "*.service")
	if err != nil || len(units) == 0 {
		t.Fatalf("no %s*.service here: %v", runUnitPrefix, err)
	}
	var cases []unitCase
	for _, name := range units {
		cases = append(cases, newUnitCase(name, name, readUnit(t, name)))
	}
	underEachSystemd(t, cases, func(t *testing.T, usr string, version int, uc unitCase) {
		t.Logf("systemd %d, %s: %s", version, uc.name, testRunUnit(t, usr, uc, built))
	})
}

// testRunUnit boots systemd with one unit of tableflip run and runs the
// checks in order; it returns the figures.
func testRunUnit(t *testing.T, usr string, uc unitCase, built string) string {
	bin := t.TempDir()
	for _, name := range []string{"server", "tableflip"} {
		if err := os.Link(filepath.Join(built, name), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	sys := realsystemd.Boot(t, realsystemd.Options{Usr: usr, Bin: bin, Units: uc.files})
	f := newFixture(sys, uc, bin, built)
	main := f.startRun(t)

	var figs []string
	t.Run("reload-under-load", func(t *testing.T) {
		l := startLoad(sys, serverAddr, 2, 2)
		if err := l.waitAnswers(20, startTimeout); err != nil {
			l.stop()
			t.Fatal(err)
		}
		var took time.Duration
		for i := range runReloads {
			o := f.reloadRun(main)
			took += o.took
			if o.reloadErr != nil || o.settleErr != nil || o.down != "" {
				t.Errorf("reload %d (program pid %d): systemctl reload: %v; %s %v", i+1, o.from, o.reloadErr, o.down, o.settleErr)
				if o.down != "" || o.settleErr != nil {
					break
				}
			}
		}
		l.waitAnswers(20, startTimeout)
		r := l.stop()
		if r.Failures() > 0 || r.Refused > 0 {
			t.Errorf("requests lost during %d reloads under load: %s", runReloads, r)
		}
		figs = append(figs, fmt.Sprintf("%d reloads under load, MainPID %d throughout, %v per reload; requests: %s",
			runReloads, main, (took/runReloads).Round(time.Millisecond), r))
	})
	t.Run("failing-generation", func(t *testing.T) {
		figs = append(figs, f.failingRunGeneration(t, main))
	})
	t.Run("self-upgrade", func(t *testing.T) {
		figs = append(figs, f.selfUpgrade(t, main))
	})
	t.Run("restart", func(t *testing.T) {
		figs = append(figs, "restart: "+f.halt(t, "restart"))
		main = f.startRun(t)
	})
	t.Run("stop", func(t *testing.T) {
		figs = append(figs, "stop: "+f.stop(t))
	})
	return strings.Join(figs, "; ")
}

// startRun starts the unit and waits until it serves: active, with
// MainPID the supervisor's, and the program (another pid) answering. It
// returns MainPID.
func (f *fixture) startRun(t *testing.T) int {
	t.Helper()
	f.sys.Systemctl("reset-failed", f.uc.service)
	// Debug after the start, as start does: then systemd records the
	// main process's end, which stop looks for.
	f.logLevel(t, "info")
	defer f.logLevel(t, "debug")
	if _, err := f.sys.Systemctl("start", f.uc.service); err != nil {
		t.Fatalf("systemctl start %s: %v\n%s", f.uc.service, err, f.journalTail(""))
	}
	deadline := time.Now().Add(startTimeout)
	for {
		pid, perr := f.probe()
		s, serr := f.sample()
		if perr == nil && serr == nil && s.Active == "active" && s.MainPID != 0 && s.MainPID != pid {
			f.current, f.base, f.prev = pid, s, s
			f.addGen(pid)
			return s.MainPID
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start serving within %v: answer from pid %d (%v), %s (%v)\n%s",
				f.uc.service, startTimeout, pid, perr, s, serr, f.journalTail(""))
		}
		time.Sleep(pollPause)
	}
}

// reloadRun runs systemctl reload and polls until the upgrade has
// settled: another program pid answers, the old one has left the cgroup,
// the unit is active and MainPID is still main. It records MainPID
// moving, and the unit going down or being restarted.
func (f *fixture) reloadRun(main int) reloadOutcome {
	o := reloadOutcome{from: f.current}
	start := time.Now()
	_, o.reloadErr = f.sys.Systemctl("reload", f.uc.service)
	deadline := time.Now().Add(settleTimeout)
	for {
		procs := f.processes()
		s, serr := f.sample()
		pid, perr := f.probe()
		if serr == nil {
			if d := f.downSince(s); d != "" {
				o.down = d + "\n" + f.downJournal()
				break
			}
			if s.MainPID != main {
				o.settleErr = fmt.Errorf("MainPID %d, want the supervisor's, %d, throughout (%s)", s.MainPID, main, s)
				break
			}
			if perr == nil && pid != o.from && pid != main && !slices.Contains(procs, o.from) && s.Active == "active" {
				o.to = pid
				f.current = pid
				f.addGen(pid)
				break
			}
		}
		if time.Now().After(deadline) {
			o.settleErr = fmt.Errorf("not settled after %v: answer from pid %d (%v); processes %v; %s (%v)\n%s",
				settleTimeout, pid, perr, procs, s, serr, f.journalTail(""))
			break
		}
		time.Sleep(pollPause)
	}
	o.took = time.Since(start)
	return o
}

// failingRunGeneration replaces the program by one that exits 1 and
// reloads: the old generation serves on, MainPID stays, the supervisor's
// log says why, and systemctl reload fails where the unit can say so.
// Then the real program is put back and a reload works again.
func (f *fixture) failingRunGeneration(t *testing.T, main int) string {
	old := f.current
	want := []string{"failing generation", "tableflip run: generation failed before it was ready"}
	entries, cursor, restore, reloadErr := f.reloadFailing(t, want)
	defer restore()
	var problems []string
	for _, text := range want {
		if e := findEntry(entries, text); e["_SYSTEMD_UNIT"] != f.uc.service {
			problems = append(problems, fmt.Sprintf("the line %s is not filed under %s", e, f.uc.service))
		}
	}
	if pid, err := f.probe(); err != nil || pid != old {
		problems = append(problems, fmt.Sprintf("answer from pid %d (%v), want the old generation %d", pid, err, old))
	}
	if s, err := f.sample(); err != nil || s.Active != "active" || s.MainPID != main || s.NRestarts != f.base.NRestarts {
		problems = append(problems, fmt.Sprintf("state after the failed upgrade: %s (%v); want active, MainPID %d", s, err, main))
	}
	if p := f.reloadProblem(reloadErr); p != "" {
		problems = append(problems, p)
	}
	if len(problems) > 0 {
		t.Errorf("a failing new generation (systemctl reload: %v):\n  %s\n%s", reloadErr, strings.Join(problems, "\n  "), f.journalTail(cursor))
	}
	restore()
	if o := f.reloadRun(main); o.down != "" || o.settleErr != nil || o.reloadErr != nil {
		t.Errorf("the first reload after the real program was put back: %v; %s %v", o.reloadErr, o.down, o.settleErr)
	}
	return fmt.Sprintf("failing generation: systemctl reload error: %v; the supervisor said: %s", reloadErr, findEntry(entries, want[1]))
}

// selfUpgrade installs a new tableflip (another file with the same
// content, by rename) and reloads: the supervisor re-executes it in place
// after the upgrade, under the same MainPID, and upgrades again after.
func (f *fixture) selfUpgrade(t *testing.T, main int) string {
	b, err := os.ReadFile(filepath.Join(f.built, "tableflip"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(f.bin, ".tableflip.new")
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.bin, "tableflip")); err != nil {
		t.Fatal(err)
	}
	cursor, err := f.sys.Cursor()
	if err != nil {
		t.Fatal(err)
	}
	if o := f.reloadRun(main); o.reloadErr != nil || o.down != "" || o.settleErr != nil {
		t.Fatalf("the reload with a new tableflip: %v; %s %v", o.reloadErr, o.down, o.settleErr)
	}
	es, err := f.sys.WaitJournal(settleTimeout, func(es []realsystemd.Entry) bool {
		return findEntry(es, "tableflip run: re-executed in place") != nil
	}, "-u", f.uc.service, "--after-cursor", cursor)
	if err != nil {
		t.Fatalf("the supervisor did not re-execute itself: %v\n%s", err, f.journalTail(cursor))
	}
	e := findEntry(es, "tableflip run: re-executed in place")
	if e.PID() != main {
		t.Errorf("re-executed as pid %d, want the main process, %d: %s", e.PID(), main, e)
	}
	o := f.reloadRun(main)
	if o.reloadErr != nil || o.down != "" || o.settleErr != nil {
		t.Errorf("a reload after the re-execution: %v; %s %v", o.reloadErr, o.down, o.settleErr)
	}
	return fmt.Sprintf("self-upgrade: %s", e)
}
