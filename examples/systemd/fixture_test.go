//go:build linux

package systemd_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/realsystemd"
)

// Bounds of the waits.
const (
	settleTimeout = 20 * time.Second // one upgrade, from reload to settled
	startTimeout  = 30 * time.Second // a start or restart, until it serves
	pollPause     = 10 * time.Millisecond
)

// serverAddr is where the README program listens by default, and where
// server.socket listens.
const serverAddr = "127.0.0.1:8080"

// fixture is one unit under one booted systemd.
type fixture struct {
	sys   *realsystemd.System
	uc    unitCase
	bin   string // bound over /usr/local/bin inside
	built string // where the real binaries are

	cgroup  string // the service's ControlGroup
	current int    // the pid serving, once settled
	base    sample // the state after the last start
	prev    sample // the last state seen
	gens    []int  // every pid that served, once settled, in order
	client  *http.Client
}

// sample is the service's state as systemctl show and its PID file say.
type sample struct {
	Active, Sub string
	MainPID     int
	NRestarts   int
	MainStart   string // ExecMainStartTimestampMonotonic
	PIDFile     int    // what the PID file names; 0: none or unreadable
	Result      string
}

func (s sample) String() string {
	str := fmt.Sprintf("ActiveState=%s SubState=%s MainPID=%d NRestarts=%d ExecMainStartTimestampMonotonic=%s Result=%s",
		s.Active, s.Sub, s.MainPID, s.NRestarts, s.MainStart, s.Result)
	if s.PIDFile != 0 {
		str += fmt.Sprintf(" PID file=%d", s.PIDFile)
	}
	return str
}

func newFixture(sys *realsystemd.System, uc unitCase, bin, built string) *fixture {
	return &fixture{
		sys: sys, uc: uc, bin: bin, built: built,
		client: &http.Client{
			Transport: &http.Transport{DialContext: sys.Dial, DisableKeepAlives: true},
			Timeout:   5 * time.Second,
		},
	}
}

func (f *fixture) sample() (sample, error) {
	p, err := f.sys.Show(f.uc.service, "ActiveState", "SubState", "MainPID", "NRestarts",
		"ExecMainStartTimestampMonotonic", "Result", "ControlGroup")
	if err != nil {
		return sample{}, err
	}
	s := sample{Active: p["ActiveState"], Sub: p["SubState"], MainStart: p["ExecMainStartTimestampMonotonic"], Result: p["Result"]}
	s.MainPID, _ = strconv.Atoi(p["MainPID"])
	s.NRestarts, _ = strconv.Atoi(p["NRestarts"])
	if cg := p["ControlGroup"]; cg != "" {
		f.cgroup = cg
	}
	if f.uc.pidFile != "" {
		if b, err := f.sys.ReadFile(f.uc.pidFile); err == nil {
			s.PIDFile, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	return s, nil
}

// probe asks the server which pid answers, on a new connection.
func (f *fixture) probe() (int, error) {
	resp, err := f.client.Get("http://" + serverAddr + "/")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	return parsePID(string(body))
}

// processes lists the pids in the service's cgroup.
func (f *fixture) processes() []int {
	pids, _ := f.sys.Processes(f.cgroup)
	return pids
}

// start starts the unit (its socket first, if it has one; the first probe
// then activates the service) and waits until it serves, with MainPID
// and the PID file naming the pid that answers.
func (f *fixture) start(t *testing.T) {
	t.Helper()
	unit := f.uc.service
	if f.uc.socket != "" {
		unit = f.uc.socket
	}
	f.sys.Systemctl("reset-failed", f.uc.service)
	f.logLevel(t, "info")
	if _, err := f.sys.Systemctl("start", unit); err != nil {
		t.Fatalf("systemctl start %s: %v\n%s", unit, err, f.journalTail(""))
	}
	pid, s, err := f.waitServing(0)
	if err != nil {
		t.Fatalf("%s did not start serving: %v\n%s", f.uc.service, err, f.journalTail(""))
	}
	f.current, f.base, f.prev = pid, s, s
	f.addGen(pid)
	f.logLevel(t, "debug")
}

// logLevel sets systemd's log level. The fixture starts the service at
// info level and then switches to debug, at which systemd records every
// new main PID (which the journal check looks for): at debug, the lines
// a process that systemd forks writes in its first second are filed
// under init.scope (see realsystemd.Options.LogLevel).
func (f *fixture) logLevel(t *testing.T, level string) {
	t.Helper()
	if _, err := f.sys.Systemctl("log-level", level); err != nil {
		t.Fatal(err)
	}
}

// waitServing waits until a pid other than not answers, and the unit is
// active with MainPID (and the PID file) naming it.
func (f *fixture) waitServing(not int) (int, sample, error) {
	deadline := time.Now().Add(startTimeout)
	for {
		pid, perr := f.probe()
		s, serr := f.sample()
		if perr == nil && serr == nil && pid != not && s.Active == "active" && s.MainPID == pid &&
			(f.uc.pidFile == "" || s.PIDFile == pid) {
			return pid, s, nil
		}
		if time.Now().After(deadline) {
			return 0, s, fmt.Errorf("after %v: answer from pid %d (%v), %s (%v)", startTimeout, pid, perr, s, serr)
		}
		time.Sleep(pollPause)
	}
}

func (f *fixture) addGen(pid int) {
	if !slices.Contains(f.gens, pid) {
		f.gens = append(f.gens, pid)
	}
}

// reloadOutcome is what one systemctl reload led to.
type reloadOutcome struct {
	from, to  int
	reloadErr error  // systemctl reload failed
	down      string // the unit went down or was restarted: how
	stale     []string
	settleErr error // no settled upgrade within settleTimeout
	took      time.Duration
	// systemctl is how long systemctl reload took to return.
	systemctl time.Duration
}

// reload runs systemctl reload and polls until the upgrade has settled:
// a new pid answers, the old generation has exited, the unit is active
// and MainPID (and the PID file) name the new pid. Meanwhile it records
// what a user would see go wrong: the unit going down or being restarted,
// MainPID or the PID file naming the old generation once it has exited,
// ExecMainStartTimestamp moving without MainPID.
func (f *fixture) reload() reloadOutcome {
	o := reloadOutcome{from: f.current}
	start := time.Now()
	_, o.reloadErr = f.sys.Systemctl("reload", f.uc.service)
	o.systemctl = time.Since(start)
	deadline := time.Now().Add(settleTimeout)
	staleSeen := map[string]bool{}
	goneSeen := false
	for {
		// Processes first: a generation missing from its cgroup has
		// exited before the state that is read next was announced.
		oldAlive := slices.Contains(f.processes(), o.from)
		s, serr := f.sample()
		pid, perr := f.probe()
		if serr == nil {
			if d := f.downSince(s); d != "" {
				o.down = d + "\n" + f.downJournal()
				o.took = time.Since(start)
				return o
			}
			if f.prev.MainStart != s.MainStart && f.prev.MainPID == s.MainPID {
				o.stale = append(o.stale, fmt.Sprintf("ExecMainStartTimestamp moved (%s → %s) but MainPID stayed %d", f.prev.MainStart, s.MainStart, s.MainPID))
			}
			f.prev = s
			// systemd learns of an exit from SIGCHLD, which the kernel
			// sends a moment after the process has left its cgroup: a
			// MainPID that still names it is untrue only in a sample
			// asked for after one that already saw it gone (systemd
			// handles signals before requests). The PID file, which
			// the library writes before the old generation may exit,
			// is judged at once.
			if !oldAlive && goneSeen {
				if s.MainPID == o.from && !staleSeen["MainPID"] {
					staleSeen["MainPID"] = true
					o.stale = append(o.stale, fmt.Sprintf("MainPID=%d after pid %d had exited (%s)", s.MainPID, o.from, s))
				}
			}
			if !oldAlive {
				goneSeen = true
				if f.uc.pidFile != "" && s.PIDFile == o.from && !staleSeen["pidfile"] {
					staleSeen["pidfile"] = true
					o.stale = append(o.stale, fmt.Sprintf("the PID file named %d after it had exited (%s)", s.PIDFile, s))
				}
			}
			if perr == nil && pid != o.from && !oldAlive && s.Active == "active" && s.MainPID == pid &&
				(f.uc.pidFile == "" || s.PIDFile == pid) {
				o.to = pid
				o.took = time.Since(start)
				f.current = pid
				f.addGen(pid)
				return o
			}
		}
		if time.Now().After(deadline) {
			o.settleErr = fmt.Errorf("not settled after %v: answer from pid %d (%v); old pid %d alive: %v; processes %v; %s (%v)\n%s",
				settleTimeout, pid, perr, o.from, oldAlive, f.processes(), s, serr, f.journalTail(""))
			o.took = time.Since(start)
			return o
		}
		time.Sleep(pollPause)
	}
}

// downSince says how the unit went down or was restarted since its last
// start, or "".
func (f *fixture) downSince(s sample) string {
	switch {
	case s.NRestarts != f.base.NRestarts:
		return fmt.Sprintf("systemd restarted the unit (NRestarts %d → %d): %s", f.base.NRestarts, s.NRestarts, s)
	case s.Active == "inactive", s.Active == "failed", s.Active == "deactivating", s.Sub == "auto-restart":
		return fmt.Sprintf("the unit went down: %s", s)
	case s.Active == "activating" && s.Sub != "reload":
		return fmt.Sprintf("the unit is being started again: %s", s)
	}
	return ""
}

// recover starts the unit again after it went down, and waits until it
// serves.
func (f *fixture) recover(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		s, err := f.sample()
		if err == nil && s.Active != "deactivating" && s.Sub != "auto-restart" && s.Active != "activating" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unit did not come to rest after going down: %s (%v)", s, err)
		}
		time.Sleep(pollPause)
	}
	f.start(t)
}

// journalTail formats the last 40 entries of journalctl -u (after cursor,
// if not empty) for a failure message: systemd's lines about the unit and
// the lines its processes wrote.
func (f *fixture) journalTail(cursor string) string {
	return f.formatJournal(f.unitJournal(cursor, nil))
}

// downJournal is journalTail("") once the journal has recorded the
// unit's end (journald may not have caught up when the state already
// says so).
func (f *fixture) downJournal() string {
	return f.formatJournal(f.unitJournal("", func(e realsystemd.Entry) bool {
		m := e["MESSAGE"]
		return strings.Contains(m, "Deactivated successfully") || strings.Contains(m, "Failed with result") ||
			strings.Contains(m, "Scheduled restart job") || strings.HasPrefix(m, "Stopped ")
	}))
}

func (f *fixture) unitJournal(cursor string, until func(realsystemd.Entry) bool) ([]realsystemd.Entry, error) {
	args := []string{"-u", f.uc.service, "-n", "120"}
	if cursor != "" {
		args = append(args, "--after-cursor", cursor)
	}
	if until == nil {
		return f.sys.Journal(args...)
	}
	return f.sys.WaitJournal(3*time.Second, func(es []realsystemd.Entry) bool {
		return slices.ContainsFunc(es, until)
	}, args...)
}

func (f *fixture) formatJournal(entries []realsystemd.Entry, err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "journalctl -u %s (last 40 entries):\n", f.uc.service)
	for _, e := range entries {
		b.WriteString("  " + e.String() + "\n")
	}
	if err != nil {
		fmt.Fprintf(&b, "  (%v)\n", err)
	}
	return b.String()
}

// replaceServer puts a program in place of /usr/local/bin/server inside,
// by rename, as a deploy would.
func (f *fixture) replaceServer(t *testing.T, content []byte) {
	t.Helper()
	tmp := filepath.Join(f.bin, ".server.new")
	if err := os.WriteFile(tmp, content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.bin, "server")); err != nil {
		t.Fatal(err)
	}
}

// restoreServer puts the real server back.
func (f *fixture) restoreServer(t *testing.T) {
	t.Helper()
	tmp := filepath.Join(f.bin, ".server.new")
	os.Remove(tmp)
	if err := os.Link(filepath.Join(f.built, "server"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.bin, "server")); err != nil {
		t.Fatal(err)
	}
}
