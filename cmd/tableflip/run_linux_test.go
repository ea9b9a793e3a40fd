package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
	"github.com/seed589fcc9d/tableflip/internal/realsystemd"
)

// python3 returns Debian's python3 (or the first in $PATH); a test that
// needs it fails in CI without it, and skips elsewhere.
func python3(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		realsystemd.SkipOrFail(t, "no python3 (apt-get install python3)")
	}
	return p
}

// TestRunPythonUnderCheck is the test: a server in a few lines of
// Python 3 (examples/python), upgraded under load by tableflip check
// through tableflip run's control socket, loses no request and leaves
// nothing behind.
func TestRunPythonUnderCheck(t *testing.T) {
	py := python3(t)
	script, err := filepath.Abs("../../examples/python/server.py")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	control, pidFile := filepath.Join(dir, "control.sock"), filepath.Join(dir, "run.pid")
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	code, stdout, _ := runCheckCmd(t, "-upgrades", "10", "-control", control, "-pidfile", pidFile, "-url", "http://"+addr+"/",
		"--", exe, "run", "-listen", "tcp://"+addr, "-control", control, "-pidfile", pidFile, "--", py, script)
	if code != exitOK || !strings.Contains(stdout, "verdict: PASS") {
		t.Fatalf("tableflip check exited %d, want 0 with verdict: PASS; its report:\n%s", code, stdout)
	}
	// The supervisor's pid stayed; ten generations came and went.
	if !strings.Contains(stdout, "upgrades           10 of 10 done") {
		t.Errorf("report does not say 10 of 10 upgrades done:\n%s", stdout)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRunUpgrade: an upgrade through the control socket starts a new
// generation with the same socket, answers with its pid and generation
// once it is ready, and drains the old one; the supervisor's pid, the PID
// file and the program's LISTEN_PID check all hold; status lists the
// generations.
func TestRunUpgrade(t *testing.T) {
	r := startRun(t, runOptions{mode: "status=hello"})
	first := r.serving()
	if a, err := r.get(); err != nil || answerPID(a) != first {
		t.Fatalf("answer %q (%v), want one from the first generation, pid %d", a, err, first)
	}
	resp := r.call(tableflip.ControlUpgrade)
	if !resp.OK || resp.Upgrade == nil || resp.Upgrade.Generation != 2 || resp.Upgrade.PID == first || resp.Upgrade.PID == r.cmd.Process.Pid {
		t.Fatalf("upgrade: %+v (error %v), want ok, generation 2, a new pid", resp, resp.Error)
	}
	second := resp.Upgrade.PID
	// The old generation accepts until it has acted on -stop-signal,
	// and serves what it accepted; once it has exited, the new one
	// answers.
	r.waitLog(fmt.Sprintf(`msg="tableflip run: generation exited" generation=1 pid=%d status="exit status 0"`, first))
	if a, err := r.get(); err != nil || answerPID(a) != second {
		t.Errorf("after the upgrade: answer %q (%v), want one from pid %d", a, err, second)
	}
	st := r.status()
	if st.PID != r.cmd.Process.Pid || st.Generation != 2 || !st.Ready || st.UpgradesSucceeded != 1 ||
		len(st.Generations) != 1 || st.Generations[0].PID != second || st.Generations[0].ParentPID != st.PID {
		t.Errorf("status after the upgrade: %+v, want pid %d (the supervisor), generation 2, one upgrade, generations [%d]", st, r.cmd.Process.Pid, second)
	}
	if pid, _ := readPIDFile(r.pidFile); pid != r.cmd.Process.Pid {
		t.Errorf("PID file names %d, want the supervisor, %d", pid, r.cmd.Process.Pid)
	}
	// tableflip status prints the program's generation, even alone.
	var out, errb bytes.Buffer
	if code := run([]string{"status", "-socket", r.control}, &out, &errb); code != exitOK || !strings.Contains(out.String(), fmt.Sprintf("pid %-8d generation 2", second)) {
		t.Errorf("tableflip status: exit %d\n%s%s\nwant a line naming generation 2, pid %d", code, out.String(), errb.String(), second)
	}
	if code := r.stop(); code != 0 {
		t.Errorf("tableflip run exited %d after SIGTERM, want 0", code)
	}
	for _, path := range []string{r.pidFile, r.control} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s is still there after the stop (%v)", path, err)
		}
	}
	if !gone(second) {
		t.Errorf("generation 2 (pid %d) outlived the supervisor", second)
	}
}

// TestRunSIGHUP: SIGHUP to the supervisor upgrades, as systemd's reload
// does; a STATUS= with READY=1 is the program's own business.
func TestRunSIGHUP(t *testing.T) {
	r := startRun(t, runOptions{})
	first := r.serving()
	from := r.mark()
	r.cmd.Process.Signal(syscall.SIGHUP)
	if _, err := r.awaitLog(`msg="tableflip run: generation ready" generation=2 `, from); err != nil {
		t.Fatal(err)
	}
	if second := r.serving(); second == first {
		t.Errorf("after SIGHUP the serving generation is still pid %d", first)
	}
	if r.stop() != 0 {
		t.Error("tableflip run did not exit 0 after SIGTERM")
	}
}

// TestRunFailedUpgrade: a new generation that exits before it is ready,
// or is not ready in time, is stopped and reaped; the old one serves on,
// and the answer says why, with the pid and exit status.
func TestRunFailedUpgrade(t *testing.T) {
	modeFile := filepath.Join(t.TempDir(), "mode")
	os.WriteFile(modeFile, []byte("serve"), 0o644)
	r := startRun(t, runOptions{mode: "file:" + modeFile, flags: []string{"-upgrade-timeout", "1s"}})
	first := r.serving()
	for _, tc := range []struct {
		mode, reason, status string
	}{
		{"exit=3", tableflip.ReasonChildExited, "exit 3"},
		{"hang", tableflip.ReasonTimeout, "exit 7"}, // it exits 7 on -stop-signal
		{"hang,ignore-term", tableflip.ReasonTimeout, "SIGKILL"},
	} {
		os.WriteFile(modeFile, []byte(tc.mode), 0o644)
		resp := r.call(tableflip.ControlUpgrade)
		e := resp.Error
		switch {
		case resp.OK || e == nil:
			t.Errorf("%s: upgrade answered %+v, want a failure", tc.mode, resp)
		case e.Reason != tc.reason || e.PID == 0 || e.PID == first || e.ExitCode == nil ||
			"exit "+fmt.Sprint(*e.ExitCode) != tc.status && e.Signal != tc.status:
			t.Errorf("%s: answer %+v (exit code %v), want reason %s, the new pid and %s", tc.mode, e, e.ExitCode, tc.reason, tc.status)
		case !gone(e.PID):
			t.Errorf("%s: the failed generation (pid %d) still runs after the answer", tc.mode, e.PID)
		}
		if a, err := r.get(); err != nil || answerPID(a) != first {
			t.Errorf("%s: after the failed upgrade: answer %q (%v), want the old generation, pid %d", tc.mode, a, err, first)
		}
	}
	st := r.status()
	if st.UpgradesFailed != 3 || st.LastFailure == nil || st.LastFailure.Reason != tableflip.ReasonTimeout {
		t.Errorf("status: %d failed, last failure %+v; want 3, the timeout", st.UpgradesFailed, st.LastFailure)
	}
	// Refusals start nothing.
	os.WriteFile(modeFile, []byte("serve,wait=300ms"), 0o644)
	done := make(chan *tableflip.ControlResponse, 1)
	from := r.mark()
	go func() {
		resp, _ := tableflip.ControlCall(context.Background(), r.control, tableflip.ControlUpgrade)
		done <- resp
	}()
	if _, err := r.awaitLog(`msg="tableflip run: generation starting" generation=2`, from); err != nil {
		t.Fatal(err)
	}
	if resp := r.call(tableflip.ControlUpgrade); resp.OK || resp.Error.Reason != tableflip.ReasonInProgress {
		t.Errorf("an upgrade during an upgrade: %+v, want reason %s", resp.Error, tableflip.ReasonInProgress)
	}
	if resp := <-done; resp == nil || !resp.OK {
		t.Errorf("the slow upgrade: %+v, want success", resp)
	}
	r.stop()
}

// TestRunDrainTimeout: an old generation that ignores -stop-signal is
// killed at -drain-timeout, and so is the last one at the end.
func TestRunDrainTimeout(t *testing.T) {
	r := startRun(t, runOptions{mode: "ignore-term", flags: []string{"-drain-timeout", "200ms"}})
	first := r.serving()
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
		t.Fatalf("upgrade: %v", resp.Error)
	}
	r.waitLog(fmt.Sprintf(`msg="tableflip run: drain deadline passed; SIGKILL" generation=1 pid=%d`, first))
	r.waitLog(fmt.Sprintf(`msg="tableflip run: generation exited" generation=1 pid=%d status="killed by signal killed"`, first))
	if code := r.stop(); code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	if !strings.Contains(r.output(), `generation=2`) || !strings.Contains(r.output(), `msg="tableflip run: drain deadline passed; SIGKILL" generation=2`) {
		t.Errorf("the last generation was not killed at the drain deadline of the stop:\n%s", r.output())
	}
}

// TestRunReplaceDead: a generation that dies after it was ready is
// replaced, with a backoff that doubles.
func TestRunReplaceDead(t *testing.T) {
	modeFile := filepath.Join(t.TempDir(), "mode")
	os.WriteFile(modeFile, []byte("serve,die=50ms"), 0o644)
	r := startRun(t, runOptions{mode: "file:" + modeFile, flags: []string{"-backoff", "10ms"}})
	r.waitLog(`msg="tableflip run: replacing the generation" in=10ms attempt=1`)
	r.waitLog(`msg="tableflip run: replacing the generation" in=20ms attempt=2`)
	os.WriteFile(modeFile, []byte("serve"), 0o644)
	from := r.mark()
	for {
		line, err := r.awaitLog(`msg="tableflip run: generation ready"`, from)
		if err != nil {
			t.Fatal(err)
		}
		from = r.mark()
		if a, err := r.get(); err == nil && strings.HasSuffix(a, "mode serve") {
			break
		}
		_ = line
	}
	if st := r.status(); !st.Ready || st.UpgradesAttempted != 0 {
		t.Errorf("status: %+v, want ready and no upgrade counted", st)
	}
	r.stop()
}

// TestRunRollback: with -rollback, a release that dies soon after it
// became ready is replaced by the previous release, started from the
// supervisor's descriptor of it although the file on disk is the new one.
func TestRunRollback(t *testing.T) {
	dir := t.TempDir()
	self, _ := os.Executable()
	prog := filepath.Join(dir, "prog")
	release := func(mode string) {
		// A release is its executable file: a script that runs the
		// helper in mode, installed by rename as a deploy does.
		script := fmt.Sprintf("#!/bin/sh\n%s=run-program %s=%s exec %s x y\n", helperEnv, runModeEnv, mode, self)
		tmp := prog + ".new"
		if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, prog); err != nil {
			t.Fatal(err)
		}
	}
	release("v1")
	r := startRun(t, runOptions{program: []string{prog}, flags: []string{"-rollback", "-rollback-grace", "1m", "-backoff", "1h"}})
	release("v2,die=300ms")
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
		t.Fatalf("upgrade to v2: %v", resp.Error)
	}
	r.waitLog(`msg="tableflip run: rolling back to the previous release"`)
	r.waitLog(`msg="tableflip run: generation ready" generation=3 `)
	a, err := r.get()
	if err != nil || !strings.HasSuffix(a, "mode v1") {
		t.Errorf("after the rollback: answer %q (%v), want one from v1", a, err)
	}
	if b, _ := os.ReadFile(prog); !strings.Contains(string(b), "v2") {
		t.Errorf("the file on disk is not v2 any more: %q", b)
	}
	r.stop()
}

// TestRunReadyProbe: with -ready tcp or http the new generation is ready
// only once it has itself accepted the probe: while it waits, the old
// generation accepts from the same socket, and its answers do not count.
func TestRunReadyProbe(t *testing.T) {
	for _, ready := range []string{"tcp", "http://ADDR/health"} {
		t.Run(strings.SplitN(ready, ":", 2)[0], func(t *testing.T) {
			dir := t.TempDir()
			modeFile, marker := filepath.Join(dir, "mode"), filepath.Join(dir, "accepting")
			os.WriteFile(modeFile, []byte("quiet"), 0o644)
			addr := freeAddr(t)
			r := startRun(t, runOptions{addr: addr, mode: "file:" + modeFile,
				flags: []string{"-ready", strings.Replace(ready, "ADDR", addr, 1)}})
			first := r.serving()
			os.WriteFile(modeFile, []byte("quiet,wait=300ms,marker="+marker), 0o644)
			resp := r.call(tableflip.ControlUpgrade)
			if !resp.OK {
				t.Fatalf("upgrade: %v", resp.Error)
			}
			b, err := os.ReadFile(marker)
			if err != nil || string(b) != fmt.Sprint(resp.Upgrade.PID) {
				t.Errorf("the upgrade succeeded before the new generation accepted (marker %q, %v; new pid %d, old %d)", b, err, resp.Upgrade.PID, first)
			}
			r.stop()
		})
	}
}

// TestRunUsage: bad command lines are refused with what was wrong.
func TestRunUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "no program"},
		{[]string{"-listen", "tcp://127.0.0.1", "--", "x"}, "missing port"},
		{[]string{"-listen", "sctp://x:1", "--", "x"}, `network "sctp"`},
		{[]string{"-listen", "a:b=tcp://127.0.0.1:1", "--", "x"}, "not allowed"},
		{[]string{"-ready", "smoke", "--", "x"}, "want notify, tcp"},
		{[]string{"-ready", "delay=2m", "--", "x"}, "not shorter than -upgrade-timeout"},
		{[]string{"-stop-signal", "NOPE", "--", "x"}, "unknown signal"},
		{[]string{"-upgrade-timeout", "0", "--", "x"}, "must be positive"},
		{[]string{"-ready", "tcp", "--", "/bin/true"}, "-ready tcp: the program gets no TCP socket"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"run"}, tc.args...), &out, &errb)
		want := exitUsage
		if tc.want == "-ready tcp: the program gets no TCP socket" {
			want = exitFailed
		}
		if code != want || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("run %q: exit %d, %q; want exit %d and %q", tc.args, code, errb.String(), want, tc.want)
		}
	}
}

// TestRunFirstGenerationFails: a program that cannot start makes the
// supervisor exit 1 with the reason, and leave nothing behind.
func TestRunFirstGenerationFails(t *testing.T) {
	r := launchRun(t, runOptions{mode: "exit=4"})
	if code := r.wait(); code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if out := r.output(); !strings.Contains(out, "new generation exited before it was ready") || !strings.Contains(out, "exit status 4") {
		t.Errorf("output does not say the program exited 4 before it was ready:\n%s", out)
	}
	for _, path := range []string{r.pidFile, r.control} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", path, err)
		}
	}
	if left := slices.DeleteFunc(proctree.Descendants(os.Getpid()), func(p proctree.Stat) bool { return p.State == "Z" }); len(left) > 0 {
		t.Errorf("processes left: %+v", left)
	}
}

// TestRunProgramEnvironment: the program gets its socket as systemd
// passes one (fd 3, LISTEN_FDS, LISTEN_FDNAMES with the -listen name,
// LISTEN_PID its own pid) and the supervisor's NOTIFY_SOCKET, and nothing
// else of the supervisor's: no other descriptor, no state variable.
func TestRunProgramEnvironment(t *testing.T) {
	// A descriptor the supervisor inherits must not reach the program.
	leak, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	r := launchRunWithFiles(t, runOptions{}, leak)
	r.waitLog(`msg="tableflip run: generation ready" generation=1 `)
	pid := r.serving()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	want := map[string]string{"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "LISTEN_PID": fmt.Sprint(pid)}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("the program's %s=%q, want %q", k, env[k], v)
		}
	}
	if !strings.HasPrefix(env["NOTIFY_SOCKET"], "@tableflip-run/") {
		t.Errorf("the program's NOTIFY_SOCKET=%q, want the supervisor's own (@tableflip-run/…)", env["NOTIFY_SOCKET"])
	}
	for k := range env {
		if strings.HasPrefix(k, "TABLEFLIP_RUN_STATE") {
			t.Errorf("the program got %s", k)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if fd.Name() == "3" && !strings.HasPrefix(link, "socket:") {
			t.Errorf("the program's fd 3 is %s, want the socket", link)
		}
		if link == os.DevNull && fd.Name() != "0" {
			t.Errorf("the program inherited the supervisor's fd as %s (%s)", fd.Name(), link)
		}
	}
	r.stop()
}

// launchRunWithFiles is launchRun with extra descriptors for the
// supervisor, as a careless parent would leave it.
func launchRunWithFiles(t *testing.T, o runOptions, files ...*os.File) *runProc {
	t.Helper()
	r := launchRunPrepared(t, o, func(cmd *exec.Cmd) { cmd.ExtraFiles = files })
	return r
}

// TestRunSystemdNotify: under systemd (a notify socket of the test's),
// the supervisor says READY=1 once the first generation is ready, and for
// an upgrade RELOADING=1 with MONOTONIC_USEC=, EXTEND_TIMEOUT_USEC= and
// READY=1, also when it fails; it relays the program's STATUS=, never its
// MAINPID= or STOPPING=1, and says STOPPING=1 itself at the end.
func TestRunSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(what string, want ...string) string {
		t.Helper()
		for {
			select {
			case m := <-msgs:
				if strings.Contains(m, "MAINPID=") {
					t.Errorf("the supervisor sent %q: a generation's MAINPID= reached systemd", m)
				}
				ok := true
				for _, w := range want {
					ok = ok && strings.Contains(m, w)
				}
				if ok {
					return m
				}
			case <-time.After(runWait):
				t.Fatalf("%s: no message with %q within %v", what, want, runWait)
			}
		}
	}
	modeFile := filepath.Join(t.TempDir(), "mode")
	os.WriteFile(modeFile, []byte("status=hello"), 0o644)
	r := startRun(t, runOptions{mode: "file:" + modeFile, env: []string{"NOTIFY_SOCKET=" + sock}})
	next("the program's STATUS=", "STATUS=hello")
	next("start", "READY=1", "STATUS=Serving: generation 1")
	r.call(tableflip.ControlUpgrade)
	next("upgrade", "RELOADING=1", "MONOTONIC_USEC=")
	next("upgrade", "EXTEND_TIMEOUT_USEC=")
	next("upgrade", "READY=1", "STATUS=Serving: generation 2")
	os.WriteFile(modeFile, []byte("exit=1"), 0o644)
	r.call(tableflip.ControlUpgrade)
	next("failed upgrade", "RELOADING=1")
	next("failed upgrade", "READY=1", "STATUS=Upgrade failed; serving: generation 2")
	r.stop()
	m := next("stop", "STOPPING=1")
	if !strings.Contains(m, "STATUS=Stopping") {
		t.Errorf("STOPPING=1 in %q, want the supervisor's own", m)
	}
	// The supervisor has exited: everything it sent is in the socket
	// before this sentinel.
	c, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("end"))
	c.Close()
	for {
		select {
		case m := <-msgs:
			if m == "end" {
				return
			}
			if strings.Contains(m, "STOPPING=1") || strings.Contains(m, "MAINPID=") {
				t.Errorf("after the supervisor's STOPPING=1: %q (a generation's, relayed)", m)
			}
		case <-time.After(runWait):
			t.Fatal("the sentinel did not arrive")
		}
	}
}

// TestRunSocketActivation: sockets that systemd passes to the supervisor
// (systemd-socket-activate here) go to the program: all of them, named,
// without -listen; a -listen with the same address takes systemd's
// socket rather than binding its own.
func TestRunSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		realsystemd.SkipOrFail(t, "no systemd-socket-activate (apt-get install systemd)")
	}
	for _, tc := range []struct {
		name   string
		listen bool
		names  string
	}{
		{"passthrough", false, "web:other"},
		{"listen-matches", true, "mine:other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, other := freeAddr(t), freeAddr(t)
			o := runOptions{
				addr: addr, noListen: true,
				wrap: []string{activate, "-l", addr, "-l", other, "--fdname=web:other"},
			}
			if tc.listen {
				o.flags = []string{"-listen", "mine=tcp://" + addr}
			}
			r := launchRun(t, o)
			r.waitLog("Listening on " + other)
			// systemd-socket-activate starts the supervisor at the
			// first connection, which waits in the queue meanwhile.
			a, err := r.get()
			if err != nil || answerPID(a) == 0 {
				t.Fatalf("first request: %q, %v", a, err)
			}
			pid := answerPID(a)
			r.waitLog(`msg="tableflip run: generation ready" generation=1 `)
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if !strings.Contains(string(b), "\x00LISTEN_FDS=2\x00") || !strings.Contains(string(b), "\x00LISTEN_FDNAMES="+tc.names+"\x00") {
				t.Errorf("the program's environment lacks LISTEN_FDS=2 and LISTEN_FDNAMES=%s: %q", tc.names, strings.ReplaceAll(string(b), "\x00", " "))
			}
			if tc.listen && !strings.Contains(r.output(), `msg="tableflip run: using the socket systemd passed" listen="mine=tcp://`+addr+`" passed_fd=3 passed_name=web`) {
				t.Errorf("-listen did not take systemd's socket:\n%s", r.output())
			}
			if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
				t.Errorf("upgrade: %v", resp.Error)
			}
			r.stop()
		})
	}
}

// installCopy writes a copy of the file at src to dst by rename, as a
// deploy does: dst is then another file (another inode) with the same
// content.
func installCopy(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	installFile(t, dst, b)
}

func installFile(t *testing.T, dst string, content []byte) {
	t.Helper()
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// TestRunSelfUpgrade: when the supervisor's own executable is replaced,
// it re-executes itself in place after the next upgrade: the same pid,
// the generations (a draining one included) and the sockets kept, the
// counters carried, no request lost meanwhile. A replacement that cannot
// take over is refused, and the supervisor serves on.
func TestRunSelfUpgrade(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "tableflip")
	installCopy(t, self, exe)
	modeFile := filepath.Join(t.TempDir(), "mode")
	os.WriteFile(modeFile, []byte("serve"), 0o644)
	r := startRun(t, runOptions{exe: exe, mode: "file:" + modeFile})
	supervisorPID := r.cmd.Process.Pid
	l := startRunLoad(r.addr)
	defer l.stop()

	// A new tableflip that cannot take over: refused.
	installFile(t, exe, []byte("#!/bin/sh\necho 'not this one' >&2\nexit 1\n"))
	from := r.mark()
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
		t.Fatalf("upgrade: %v", resp.Error)
	}
	if _, err := r.awaitLog(`msg="tableflip run: not re-executing the new executable; serving on"`, from); err != nil {
		t.Fatal(err)
	}

	// A good one: the next upgrade re-executes it. The old generation
	// drains across the re-execution: it holds on until the test opens
	// the FIFO.
	fifo := filepath.Join(t.TempDir(), "hold")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(modeFile, []byte("serve,hold="+fifo), 0o644)
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
		t.Fatalf("upgrade: %v", resp.Error)
	}
	first := r.serving()
	installCopy(t, self, exe)
	os.WriteFile(modeFile, []byte("serve"), 0o644)
	from = r.mark()
	resp := r.call(tableflip.ControlUpgrade)
	if !resp.OK {
		t.Fatalf("upgrade: %v", resp.Error)
	}
	if _, err := r.awaitLog(`msg="tableflip run: re-executed in place"`, from); err != nil {
		t.Fatal(err)
	}
	st := r.status()
	if st.PID != supervisorPID || st.Generation != resp.Upgrade.Generation || st.UpgradesSucceeded != 3 ||
		len(st.Generations) != 2 || st.Generations[0].PID != first || st.Generations[0].DrainingSince.IsZero() ||
		st.Generations[1].PID != resp.Upgrade.PID {
		t.Errorf("status after the re-execution: %+v; want pid %d, generation %d, 3 upgrades, pid %d draining, pid %d serving",
			st, supervisorPID, resp.Upgrade.Generation, first, resp.Upgrade.PID)
	}
	// The new image reaps the generation that drained across.
	from = r.mark()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := r.awaitLog(fmt.Sprintf(`msg="tableflip run: generation exited" generation=%d pid=%d status="exit status 0"`, resp.Upgrade.Generation-1, first), from); err != nil {
		t.Errorf("the generation that drained across the re-execution: %v", err)
	}
	// The new image upgrades as the old one did.
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
		t.Errorf("an upgrade after the re-execution: %v", resp.Error)
	}
	r.stopUnderLoad(l, "the re-execution")
}

// runLoad is a request loop, new connection per request, that never
// retries.
type runLoad struct {
	stopc  chan struct{}
	done   chan struct{}
	n      int
	failed []string
}

func startRunLoad(addr string) *runLoad {
	l := &runLoad{stopc: make(chan struct{}), done: make(chan struct{})}
	c := http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: httpWait}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stopc:
				return
			default:
			}
			resp, err := c.Get("http://" + addr + "/")
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			l.n++
			if err != nil && len(l.failed) < 10 {
				l.failed = append(l.failed, err.Error())
			}
		}
	}()
	return l
}

// stopUnderLoad stops the load, which must have lost nothing across
// what, then the supervisor, which must exit 0.
func (r *runProc) stopUnderLoad(l *runLoad, what string) {
	r.t.Helper()
	if n, failed := l.stop(); n == 0 || len(failed) > 0 {
		r.t.Errorf("load across %s: %d requests, %d failed: %v", what, n, len(failed), failed)
	}
	if code := r.stop(); code != 0 {
		r.t.Errorf("exit %d after SIGTERM, want 0", code)
	}
}

// stop ends the loop and returns how many requests it sent and how the
// failed ones failed (the first ten).
func (l *runLoad) stop() (int, []string) {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	<-l.done
	return l.n, l.failed
}

// TestRunLibraryServer: a Go program built on this library (the README's,
// examples/server) runs under tableflip run unchanged: it takes the
// socket through socket activation (Options.Systemd), says READY=1, and
// drains on SIGTERM; under load, upgrades lose nothing.
func TestRunLibraryServer(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		realsystemd.SkipOrFail(t, "no go command to build examples/server with")
	}
	server := filepath.Join(t.TempDir(), "server")
	if out, err := exec.Command(goTool, "build", "-o", server, "github.com/seed589fcc9d/tableflip/examples/server").CombinedOutput(); err != nil {
		t.Fatalf("go build examples/server: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	r := startRun(t, runOptions{addr: addr, program: []string{server, "-addr", addr}})
	l := startRunLoad(addr)
	for range 5 {
		if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
			t.Fatalf("upgrade: %v", resp.Error)
		}
	}
	r.stopUnderLoad(l, "5 upgrades")
	out := r.output()
	if strings.Contains(out, "tableflip: socket activation") || !strings.Contains(out, "tableflip: using a socket systemd passed") {
		t.Errorf("the server did not take its socket from the supervisor by socket activation:\n%s", out)
	}
	if n := strings.Count(out, `status="exit status 0"`); n != 6 {
		t.Errorf("%d generations exited with status 0, want 6 (each drained):\n%s", n, out)
	}
}

// TestRunStopSignal: -stop-signal is what a draining generation gets.
func TestRunStopSignal(t *testing.T) {
	r := startRun(t, runOptions{mode: "stop-on=USR1", flags: []string{"-stop-signal", "USR1"}})
	first := r.serving()
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK {
		t.Fatalf("upgrade: %v", resp.Error)
	}
	r.waitLog(fmt.Sprintf(`msg="tableflip run: generation exited" generation=1 pid=%d status="exit status 0"`, first))
	if code := r.stop(); code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	if !strings.Contains(r.output(), `msg="tableflip run: generation exited" generation=2 `) || strings.Contains(r.output(), "killed") {
		t.Errorf("a generation did not drain on SIGUSR1:\n%s", r.output())
	}
}

// TestRunReadyDelay: with -ready delay=D a generation is ready when it
// still runs D after it was executed; one that exits first fails. D is
// long beside the life of a program that exits at once (a test binary
// under -race on a busy machine: once more than 50 ms).
func TestRunReadyDelay(t *testing.T) {
	modeFile := filepath.Join(t.TempDir(), "mode")
	os.WriteFile(modeFile, []byte("quiet"), 0o644)
	r := startRun(t, runOptions{mode: "file:" + modeFile, flags: []string{"-ready", "delay=1s"}})
	if resp := r.call(tableflip.ControlUpgrade); !resp.OK || resp.Upgrade.Seconds < 1 {
		t.Errorf("upgrade: %+v (%v), want ready after at least 1s", resp.Upgrade, resp.Error)
	}
	os.WriteFile(modeFile, []byte("exit=5"), 0o644)
	if resp := r.call(tableflip.ControlUpgrade); resp.OK || resp.Error.Reason != tableflip.ReasonChildExited {
		t.Errorf("an upgrade to a program that exits at once: %+v, want %s", resp.Error, tableflip.ReasonChildExited)
	}
	r.stop()
}

// TestRunSocketKinds: -listen makes Unix and UDP sockets too, named, in
// order; a Unix socket file that nobody serves is replaced, and the
// supervisor removes the file it made at the end; -control-group gives
// the control socket mode 0660.
func TestRunSocketKinds(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	// Left by a supervisor that was killed: a socket file, nobody on it.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	udp := freeAddr(t)
	r := startRun(t, runOptions{flags: []string{"-listen", "app=unix://" + path, "-listen", "dns=udp://" + udp, "-control-group", "0"}})
	pid := r.serving()
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if !strings.Contains(string(b), "\x00LISTEN_FDS=3\x00") || !strings.Contains(string(b), "\x00LISTEN_FDNAMES=web:app:dns\x00") {
		t.Errorf("the program's environment: %q; want LISTEN_FDS=3, LISTEN_FDNAMES=web:app:dns", strings.ReplaceAll(string(b), "\x00", " "))
	}
	for fd, want := range map[int]string{4: "unix", 5: "udp"} {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
		if !strings.HasPrefix(link, "socket:") {
			t.Errorf("fd %d of the program is %q, want the %s socket", fd, link, want)
		}
	}
	if info, err := os.Stat(r.control); err != nil || info.Mode().Perm() != 0o660 {
		t.Errorf("control socket with -control-group: %v (%v), want mode 0660", info.Mode(), err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Errorf("the Unix socket does not take connections: %v", err)
	} else {
		c.Close()
	}
	r.stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s is still there after the stop (%v)", path, err)
	}
}

// TestRunStopDuringStart: SIGTERM while the first generation starts stops
// it and ends the supervisor as a stop does (exit 0), not as a program
// that cannot start.
func TestRunStopDuringStart(t *testing.T) {
	r := launchRun(t, runOptions{mode: "hang"})
	r.waitLog(`msg="tableflip run: generation starting" generation=1 `)
	r.cmd.Process.Signal(syscall.SIGTERM)
	if code := r.wait(); code != 0 {
		t.Errorf("exit %d after SIGTERM during the first start, want 0:\n%s", code, r.output())
	}
	if _, err := os.Stat(r.pidFile); !os.IsNotExist(err) {
		t.Errorf("PID file %s written or left (%v)", r.pidFile, err)
	}
}
