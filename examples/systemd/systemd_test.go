//go:build linux

// Package systemd_test runs the unit files of this directory, unmodified,
// under a real systemd: the machine's (252 on Debian 12) and the one from
// bookworm-backports (254), each booted as PID 1 of its own namespaces by
// internal/realsystemd. The server is the README program (examples/server)
// and cmd/tableflip, built into the directory bound over /usr/local/bin.
//
// For each unit and version it checks what a user would: reloads of an
// idle server and under a request loop never take the unit down and lose
// no request; MainPID and the PID file name the serving generation; stop
// after reloads drains without SIGKILL; restart with the fd store or a
// socket unit refuses no connection; a failing new generation leaves the
// old one serving; every generation's log lines stay with the unit.
//
//	go test -v -run TestUnits ./examples/systemd
//	go test -v -run TestUnits ./examples/systemd -reloads 20
//	TABLEFLIP_SYSTEMD_RELOADS=20 go test ./...
package systemd_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/realsystemd"
)

var reloadsFlag = flag.Int("reloads", 0, "reloads per phase (default: $TABLEFLIP_SYSTEMD_RELOADS, else 100)")

func reloadCount(t *testing.T) int {
	if *reloadsFlag > 0 {
		return *reloadsFlag
	}
	if v := os.Getenv("TABLEFLIP_SYSTEMD_RELOADS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("TABLEFLIP_SYSTEMD_RELOADS=%q: want a positive number", v)
		}
		return n
	}
	return 100
}

// unitCase is one unit setup of this directory.
type unitCase struct {
	name    string            // the subtest's name
	files   map[string]string // unit files to install, as they are here
	service string            // the service under test
	socket  string            // the socket unit in front of it, or ""
	pidFile string            // its PIDFile=, or ""
	fdStore bool              // FileDescriptorStoreMax= is set
	// reloadReports: systemctl reload fails when the upgrade fails. Only
	// an ExecReload= that waits for the outcome can say so (tableflip
	// upgrade, server-control.service). ExecReload=/bin/kill -HUP
	// (server-notify, server-pidfile) succeeds as soon as the signal is
	// sent; Type=notify-reload ends a reload as a success at any READY=1
	// after RELOADING=1, and the library sends READY=1 after a failed
	// upgrade too (with a STATUS= naming the failure).
	reloadReports bool
	minVersion    int // Type=notify-reload needs 253
}

// directive returns the value of the first "key=value" line of a unit
// file, or "".
func directive(text, key string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// newUnitCase is the case of the unit file text, installed as service.
func newUnitCase(name, service, text string) unitCase {
	uc := unitCase{
		name:          name,
		files:         map[string]string{service: text},
		service:       service,
		pidFile:       directive(text, "PIDFile"),
		fdStore:       directive(text, "FileDescriptorStoreMax") != "",
		reloadReports: strings.Contains(directive(text, "ExecReload"), "tableflip upgrade"),
	}
	if directive(text, "Type") == "notify-reload" {
		uc.minVersion = 253
	}
	return uc
}

// readUnit returns the unit file name of this directory.
func readUnit(t *testing.T, name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unitCases reads the unit files of this directory: each service alone,
// and server.socket in front of server-notify.service installed as
// server.service (the name the socket activates).
func unitCases(t *testing.T) []unitCase {
	services, err := filepath.Glob("*.service")
	if err != nil || len(services) == 0 {
		t.Fatalf("no unit files here: %v", err)
	}
	var cases []unitCase
	for _, s := range services {
		if strings.HasPrefix(s, runUnitPrefix) {
			continue // TestRunUnits: the main PID never moves
		}
		cases = append(cases, newUnitCase(s, s, readUnit(t, s)))
	}
	sock := newUnitCase("server.socket+server-notify.service", "server.service", readUnit(t, "server-notify.service"))
	sock.socket = "server.socket"
	sock.files["server.socket"] = readUnit(t, "server.socket")
	return append(cases, sock)
}

// buildBinaries builds the README program as server and cmd/tableflip as
// tableflip into a directory.
func buildBinaries(t *testing.T) string {
	goTool, err := exec.LookPath("go")
	if err != nil {
		realsystemd.SkipOrFail(t, "no go command to build the server with")
	}
	dir := t.TempDir()
	for name, pkg := range map[string]string{
		"server":    "github.com/seed589fcc9d/tableflip/examples/server",
		"tableflip": "github.com/seed589fcc9d/tableflip/cmd/tableflip",
	} {
		out, err := exec.Command(goTool, "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return dir
}

// TestUnits runs every unit of this directory under each systemd.
func TestUnits(t *testing.T) {
	realsystemd.Need(t)
	n := reloadCount(t)
	built := buildBinaries(t)
	var mu sync.Mutex
	var figures []string
	t.Cleanup(func() {
		sort.Strings(figures)
		t.Logf("figures (%d reloads per phase):\n%s", n, strings.Join(figures, "\n"))
	})
	underEachSystemd(t, unitCases(t), func(t *testing.T, usr string, version int, uc unitCase) {
		figs := testUnit(t, usr, uc, built, n)
		mu.Lock()
		figures = append(figures, fmt.Sprintf("systemd %d, %s:\n    %s", version, uc.name, strings.Join(figs, "\n    ")))
		mu.Unlock()
	})
}

// underEachSystemd runs test for each case under the machine's systemd
// and the one from bookworm-backports, where the case's version allows:
// the versions side by side (each System has namespaces of its own, its
// own port 8080 included), the cases of a version one after another,
// each as a subtest.
func underEachSystemd(t *testing.T, cases []unitCase, test func(t *testing.T, usr string, version int, uc unitCase)) {
	backports, err := realsystemd.Backports(context.Background())
	if err != nil {
		realsystemd.SkipOrFail(t, err.Error())
	}
	for _, usr := range []string{"", backports} {
		version, err := realsystemd.Version(usr)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprintf("systemd%d", version), func(t *testing.T) {
			t.Parallel()
			for _, uc := range cases {
				if version < uc.minVersion {
					t.Logf("%s: not run, it needs systemd %d or later", uc.name, uc.minVersion)
					continue
				}
				t.Run(uc.name, func(t *testing.T) { test(t, usr, version, uc) })
			}
		})
	}
}

// testUnit boots systemd with one unit setup and runs the checks in
// order, each as a subtest; it returns one line of figures per check.
func testUnit(t *testing.T, usr string, uc unitCase, built string, n int) []string {
	bin := t.TempDir()
	for _, name := range []string{"server", "tableflip"} {
		if err := os.Link(filepath.Join(built, name), filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	sys := realsystemd.Boot(t, realsystemd.Options{
		Usr:   usr,
		Bin:   bin,
		Units: uc.files,
	})
	f := newFixture(sys, uc, bin, built)
	f.start(t)

	var figs []string
	add := func(format string, args ...any) { figs = append(figs, fmt.Sprintf(format, args...)) }
	t.Run("reload-idle", func(t *testing.T) {
		add("idle: %s", f.reloads(t, n, nil))
	})
	t.Run("reload-under-load", func(t *testing.T) {
		l := startLoad(sys, serverAddr, 2, 2)
		if err := l.waitAnswers(20, startTimeout); err != nil {
			l.stop()
			t.Fatal(err)
		}
		summary := f.reloads(t, n, l)
		l.waitAnswers(20, startTimeout)
		r := l.stop()
		if r.Failures() > 0 || r.Refused > 0 {
			t.Errorf("requests lost during %d reloads under load: %s", n, r)
		}
		add("under load: %s; requests: %s", summary, r)
	})
	t.Run("failing-generation", func(t *testing.T) {
		add("failing generation: %s", f.failingGeneration(t))
	})
	t.Run("journal", func(t *testing.T) {
		add("journal: %s", f.journal(t))
	})
	t.Run("stop", func(t *testing.T) {
		add("stop after reloads: %s", f.stop(t))
	})
	if uc.fdStore || uc.socket != "" {
		t.Run("restart", func(t *testing.T) {
			add("restart under load: %s", f.restart(t))
		})
	}
	return figs
}

// reloads runs n reloads, each waited for until it settles, and checks
// that none took the unit down or left MainPID, the PID file or
// ExecMainStartTimestamp untrue. It returns the figures.
func (f *fixture) reloads(t *testing.T, n int, l *load) string {
	var downs, stale, reloadErrs, unsettled int
	var took time.Duration
	var systemctl []time.Duration
	var firstDown, firstStale, firstErr string
	consecutiveUnsettled := 0
	for i := range n {
		o := f.reload()
		took += o.took
		systemctl = append(systemctl, o.systemctl)
		if len(o.stale) > 0 {
			stale++
			if firstStale == "" {
				firstStale = fmt.Sprintf("reload %d (pid %d → %d): %s", i+1, o.from, o.to, strings.Join(o.stale, "; "))
			}
		}
		if o.reloadErr != nil {
			reloadErrs++
			if firstErr == "" {
				firstErr = fmt.Sprintf("reload %d: %v", i+1, o.reloadErr)
			}
		}
		switch {
		case o.down != "":
			downs++
			if firstDown == "" {
				firstDown = fmt.Sprintf("reload %d (from pid %d): %s", i+1, o.from, o.down)
			}
			f.recover(t)
		case o.settleErr != nil:
			unsettled++
			consecutiveUnsettled++
			t.Errorf("reload %d (from pid %d): %v", i+1, o.from, o.settleErr)
			if consecutiveUnsettled == 3 {
				t.Fatalf("3 reloads in a row did not settle; giving up after %d of %d", i+1, n)
			}
			continue
		}
		consecutiveUnsettled = 0
	}
	slices.Sort(systemctl)
	summary := fmt.Sprintf("%d reloads, %d took the unit down, %d with MainPID/PID file/ExecMainStartTimestamp untrue, %d systemctl reload failed, %d not settled; %v per reload; systemctl reload returned in median %v, max %v",
		n, downs, stale, reloadErrs, unsettled, (took / time.Duration(n)).Round(time.Millisecond),
		systemctl[len(systemctl)/2].Round(time.Millisecond), systemctl[len(systemctl)-1].Round(time.Millisecond))
	if downs > 0 {
		t.Errorf("%d of %d reloads took %s down; the first: %s", downs, n, f.uc.service, firstDown)
	}
	if stale > 0 {
		t.Errorf("%d of %d reloads announced an exited generation; the first: %s", stale, n, firstStale)
	}
	if reloadErrs > 0 {
		t.Errorf("%d of %d systemctl reload failed; the first: %s", reloadErrs, n, firstErr)
	}
	return summary
}

// failingStub stands in for a new version that fails before Ready.
const failingStub = "#!/bin/sh\necho \"failing generation $$: exiting 1\" >&2\nexit 1\n"

// failingGeneration replaces the server by a program that exits 1,
// reloads, and checks that the old generation serves on, that the unit
// stays as it was, and that systemctl reload fails where the unit can
// say so; then it puts the real server back and checks that an upgrade
// works again.
func (f *fixture) failingGeneration(t *testing.T) string {
	old := f.current
	before, err := f.sample()
	if err != nil {
		t.Fatal(err)
	}
	// The stub writes a line; the README program's logger records
	// "tableflip: upgrade failed" once a SIGHUP's upgrade has failed (an
	// upgrade asked for on the control socket is answered to tableflip
	// upgrade instead, and systemctl reload has waited for it). Wait for
	// them in the whole journal, so that a line filed under another unit
	// is found too, and told apart from a missing one.
	want := []string{"failing generation"}
	if !f.uc.reloadReports {
		want = append(want, "tableflip: upgrade failed")
	}
	entries, cursor, restore, reloadErr := f.reloadFailing(t, want)
	defer restore()
	var problems []string
	for range 5 {
		pid, err := f.probe()
		if err != nil || pid != old {
			problems = append(problems, fmt.Sprintf("answer from pid %d (%v), want the old generation %d", pid, err, old))
			break
		}
	}
	after, err := f.sample()
	if err != nil {
		t.Fatal(err)
	}
	if after.Active != "active" || after.MainPID != old || after.NRestarts != before.NRestarts ||
		(f.uc.pidFile != "" && after.PIDFile != old) {
		problems = append(problems, fmt.Sprintf("state after the failed upgrade: %s; before: %s", after, before))
	}
	if p := f.reloadProblem(reloadErr); p != "" {
		problems = append(problems, p)
	}
	// Where the failure's lines went: the stub's own line, written by a
	// new generation that the serving one started, and the serving one's.
	unitEntries, _ := f.sys.Journal("-u", f.uc.service, "--after-cursor", cursor)
	var filed []string
	for _, text := range want {
		e := findEntry(entries, text)
		filed = append(filed, e.String())
		if findEntry(unitEntries, text) == nil {
			problems = append(problems, fmt.Sprintf("journalctl -u %s lacks the line %s", f.uc.service, e))
		}
	}
	if len(problems) > 0 {
		t.Errorf("a failing new generation (systemctl reload: %v):\n  %s\n%s", reloadErr, strings.Join(problems, "\n  "), f.journalTail(cursor))
	}

	restore()
	o := f.reload()
	if o.down != "" || o.settleErr != nil {
		t.Errorf("the first reload after the real server was put back: down: %s; %v", o.down, o.settleErr)
		if o.down != "" {
			f.recover(t)
		}
	}
	return fmt.Sprintf("systemctl reload error: %v; old pid %d serving after: %v; lines: %s",
		reloadErr, old, len(problems) == 0, strings.Join(filed, " | "))
}

// reloadFailing puts failingStub in place of the server, runs systemctl
// reload and waits until every line of want is in the journal (the whole
// journal: a line filed under another unit is found too). It returns the
// journal since, the cursor before, restore, which puts the real server
// back (once; call it on every path), and what systemctl reload said.
func (f *fixture) reloadFailing(t *testing.T, want []string) (entries []realsystemd.Entry, cursor string, restore func(), reloadErr error) {
	t.Helper()
	cursor, err := f.sys.Cursor()
	if err != nil {
		t.Fatal(err)
	}
	f.replaceServer(t, []byte(failingStub))
	restored := false
	restore = func() {
		if !restored {
			restored = true
			f.restoreServer(t)
		}
	}
	_, reloadErr = f.sys.Systemctl("reload", f.uc.service)
	entries, err = f.sys.WaitJournal(settleTimeout, func(es []realsystemd.Entry) bool {
		for _, text := range want {
			if findEntry(es, text) == nil {
				return false
			}
		}
		return true
	}, "--after-cursor", cursor)
	if err != nil {
		restore()
		t.Fatalf("no %q lines after the reload (systemctl reload: %v): %v\n%s", want, reloadErr, err, f.journalTail(cursor))
	}
	return entries, cursor, restore, reloadErr
}

// reloadProblem says what is wrong with how systemctl reload ended after
// a failed upgrade, or "": it must fail where the unit's ExecReload=
// waits for the outcome, and succeed where it cannot tell.
func (f *fixture) reloadProblem(reloadErr error) string {
	switch {
	case f.uc.reloadReports && reloadErr == nil:
		return "systemctl reload succeeded, want it to fail: its ExecReload= waits for the outcome"
	case !f.uc.reloadReports && reloadErr != nil:
		return fmt.Sprintf("systemctl reload failed (%v), want success: this unit type cannot report the outcome", reloadErr)
	}
	return ""
}

// findEntry returns the first entry whose message contains text.
func findEntry(es []realsystemd.Entry, text string) realsystemd.Entry {
	for _, e := range es {
		if strings.Contains(e["MESSAGE"], text) {
			return e
		}
	}
	return nil
}

// journal checks that every line a generation wrote (on its stderr) is
// filed under the unit, and that every generation that served appears in journalctl -u:
// by a line of its own (_PID) or by systemd's record of it as the new
// main PID ("MAINPID=N" in a notification, "Main PID changing: M -> N",
// "Supervising process N", the fixture having set systemd's log level to
// debug after the first start). The README program writes nothing per
// generation; the failing-generation check makes a late generation write
// a line. journald reads the writer's credentials from every message on a
// stream (SO_PASSCRED), so lines that a later generation writes on the
// stderr it inherited carry its own _PID, not the first generation's.
func (f *fixture) journal(t *testing.T) string {
	// What the program wrote: its stderr stream (systemd's own lines
	// about a process it forks, _TRANSPORT=journal, are not the
	// program's).
	all, err := f.sys.Journal("_TRANSPORT=stdout")
	if err != nil {
		t.Fatal(err)
	}
	unit, err := f.sys.Journal("-u", f.uc.service)
	if err != nil {
		t.Fatal(err)
	}
	var misfiled []string
	own := map[int]bool{}
	for _, e := range all {
		if slices.Contains(f.gens, e.PID()) {
			own[e.PID()] = true
			if e["_SYSTEMD_UNIT"] != f.uc.service {
				misfiled = append(misfiled, e.String())
			}
		}
	}
	// The pids that journalctl -u shows lines of, or lines naming them.
	named := map[int]bool{}
	for _, e := range unit {
		named[e.PID()] = true
		if e["UNIT"] == f.uc.service || e["_SYSTEMD_UNIT"] == f.uc.service {
			for _, n := range numberRE.FindAllString(e["MESSAGE"], -1) {
				pid, _ := strconv.Atoi(n)
				named[pid] = true
			}
		}
	}
	var missing []int
	for _, pid := range f.gens {
		if !named[pid] {
			missing = append(missing, pid)
		}
	}
	if len(misfiled) > 0 {
		t.Errorf("%d lines written by generations of %s are filed under another unit:\n  %s", len(misfiled), f.uc.service, strings.Join(misfiled, "\n  "))
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d generations do not appear in journalctl -u %s: %v\n%s", len(missing), len(f.gens), f.uc.service, missing, f.journalTail(""))
	}
	return fmt.Sprintf("%d of %d generations appear under -u, %d by lines of their own; %d of their lines filed under another unit",
		len(f.gens)-len(missing), len(f.gens), len(own), len(misfiled))
}

// stop stops the unit and checks that it drained: the serving generation
// exited by itself with status 0, the unit's result is success, and no
// SIGKILL is in the journal.
//
// The journal says how the stop went, not systemctl show: a unit that
// stopped cleanly and nothing else refers to is garbage-collected at once
// ("Collecting."), and show then prints a freshly loaded unit's defaults
// (Result=success, ExecMainCode=0), whatever happened.
func (f *fixture) stop(t *testing.T) string {
	return f.halt(t, "stop")
}

// halt is stop for systemctl verb, stop or restart: after a restart only
// the processes of before must have left the cgroup.
func (f *fixture) halt(t *testing.T, verb string) string {
	gen := f.current
	before := f.processes()
	cursor, err := f.sys.Cursor()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := f.sys.Systemctl(verb, f.uc.service); err != nil {
		t.Errorf("systemctl %s: %v", verb, err)
	}
	took := time.Since(start)
	entries, err := f.sys.WaitJournal(5*time.Second, func(es []realsystemd.Entry) bool {
		return findEntry(es, "Stopped ") != nil
	}, "-u", f.uc.service, "--after-cursor", cursor)
	if err != nil {
		t.Errorf("no \"Stopped\" line: %v", err)
	}
	result := "unknown (no \"Deactivated successfully\" or \"Failed with result\" line)"
	mainExit := "none: systemd did not see the main process end"
	var kills []string
	for _, e := range entries {
		m := e["MESSAGE"]
		if strings.Contains(m, "SIGKILL") || strings.Contains(m, "Killing process") || strings.Contains(m, "status=9/KILL") {
			kills = append(kills, e.String())
		}
		if sub := resultRE.FindStringSubmatch(m); sub != nil {
			result = sub[1]
		} else if strings.Contains(m, "Deactivated successfully") {
			result = "success"
		}
		if sub := mainExitRE.FindStringSubmatch(m); sub != nil {
			mainExit = sub[1]
		}
	}
	var problems []string
	if result != "success" {
		problems = append(problems, "result: "+result+", want success")
	}
	if mainExit != "code=exited, status=0/SUCCESS" {
		problems = append(problems, fmt.Sprintf("main process exit: %s; want code=exited, status=0/SUCCESS: the serving generation did not drain and exit", mainExit))
	}
	if len(kills) > 0 {
		problems = append(problems, fmt.Sprintf("%d SIGKILL lines:\n    %s", len(kills), strings.Join(kills, "\n    ")))
	}
	left := f.processes()
	if verb == "restart" {
		left = slices.DeleteFunc(left, func(pid int) bool { return !slices.Contains(before, pid) })
	}
	if len(left) > 0 {
		problems = append(problems, fmt.Sprintf("processes left in the unit's cgroup: %v", left))
	}
	if len(problems) > 0 {
		t.Errorf("systemctl %s of %s (serving pid %d, %d generations so far) took %v:\n  %s\n%s",
			verb, f.uc.service, gen, len(f.gens), took.Round(time.Millisecond), strings.Join(problems, "\n  "), f.journalTail(cursor))
	}
	return fmt.Sprintf("result %s; main process exit %s; %d SIGKILL lines; took %v",
		result, mainExit, len(kills), took.Round(time.Millisecond))
}

var numberRE = regexp.MustCompile(`\b[0-9]+\b`)

// What systemd logs about a unit's end.
var (
	resultRE   = regexp.MustCompile(`Failed with result '([^']+)'`)
	mainExitRE = regexp.MustCompile(`Main process exited, (code=\S+, status=\S+)`)
)

// restart starts the unit again, upgrades it a few times (so that, as in
// production, the serving generation is not the one systemd started),
// then restarts it under a new-connection-per-request load and counts
// refused and failed requests.
func (f *fixture) restart(t *testing.T) string {
	f.start(t)
	for range 3 {
		if o := f.reload(); o.down != "" || o.settleErr != nil {
			t.Logf("a reload before the restart: down: %s; %v", o.down, o.settleErr)
			if o.down != "" {
				f.recover(t)
			}
		}
	}
	l := startLoad(f.sys, serverAddr, 4, 0)
	if err := l.waitAnswers(20, startTimeout); err != nil {
		l.stop()
		t.Fatal(err)
	}
	old := f.current
	start := time.Now()
	f.logLevel(t, "info")
	_, rerr := f.sys.Systemctl("restart", f.uc.service)
	pid, s, err := f.waitServing(old)
	took := time.Since(start)
	f.logLevel(t, "debug")
	l.waitAnswers(50, startTimeout)
	r := l.stop()
	if rerr != nil || err != nil {
		t.Fatalf("systemctl restart: %v; serving after it: %v", rerr, err)
	}
	f.current, f.base, f.prev = pid, s, s
	f.addGen(pid)
	if r.Refused > 0 || r.Failures() > 0 {
		t.Errorf("systemctl restart (pid %d → %d, %v) with the fd store under load: %s", old, pid, took.Round(time.Millisecond), r)
	}
	return fmt.Sprintf("pid %d → %d in %v; requests: %s", old, pid, took.Round(time.Millisecond), r)
}
