//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestUpgradeAndStatusCommands runs the sample server with a control
// socket and upgrades it with "tableflip upgrade".
func TestUpgradeAndStatusCommands(t *testing.T) {
	if !becomeSubreaper() {
		t.Skip("cannot become a subreaper to reap the generations")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "ctl.sock")
	addrFile := filepath.Join(dir, "addr")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], sampleServerCommand, "-control", sock, "-addrfile", addrFile, "-drain-timeout", "1s")
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	serverLog := make(chan string, 100)
	go func() {
		defer close(serverLog)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			serverLog <- sc.Text()
		}
	}()
	live := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(live, syscall.SIGTERM)
		if live == cmd.Process.Pid {
			cmd.Wait()
		} else {
			syscall.Wait4(live, nil, 0, nil)
		}
		for range serverLog {
		}
	})

	// The socket appears in New, and answers from then on: ask until
	// the server is ready.
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		resp, err := tableflip.ControlCall(context.Background(), sock, tableflip.ControlStatus)
		if err == nil && resp.OK && resp.Status.Ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sample server did not get ready within a minute: %v %+v", err, resp)
		}
		<-tick.C
	}
	code, out, errOut := runCmd("status", "-socket", sock)
	if code != exitOK || !strings.Contains(out, "generation    1\n") || !strings.Contains(out, "ready         yes") ||
		!strings.Contains(out, "upgrades      0 attempted, 0 succeeded, 0 failed") {
		t.Errorf("status: exit %d:\n%s%s", code, out, errOut)
	}

	code, out, errOut = runCmd("upgrade", "-socket", sock)
	if code != exitOK || !strings.HasPrefix(out, "upgraded: generation 2 (pid ") {
		t.Fatalf("upgrade: exit %d: %s%s", code, out, errOut)
	}
	old := live
	code, out, errOut = runCmd("status", "-socket", sock, "-json")
	var resp tableflip.ControlResponse
	if err := json.Unmarshal([]byte(out), &resp); err != nil || code != exitOK || resp.Status == nil {
		t.Fatalf("status -json: exit %d: %s%s (%v)", code, out, errOut, err)
	}
	live = resp.Status.PID
	if resp.Status.Generation != 2 || resp.Status.ParentPID != old || live == old {
		t.Errorf("status after the upgrade: %+v, want generation 2 with parent %d", resp.Status, old)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("first generation: %v", err)
	}

	code, out, errOut = runCmd("upgrade", "-socket", sock, "-json")
	if err := json.Unmarshal([]byte(out), &resp); err != nil || code != exitOK || !resp.OK || resp.Upgrade.Generation != 3 {
		t.Fatalf("upgrade -json: exit %d: %s%s", code, out, errOut)
	}
	prev := live
	live = resp.Upgrade.PID
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(prev, &ws, 0, nil); err != nil || ws.ExitStatus() != 0 {
		t.Errorf("second generation: %v %v", err, ws)
	}
}

// fakeControl answers every connection on a new socket with answer.
func fakeControl(t *testing.T, answer string) string {
	t.Helper()
	return fakeControlBy(t, func(string) string { return answer })
}

// fakeControlBy answers each request with what answer says for its
// command.
func fakeControlBy(t *testing.T, answer func(cmd string) string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			var req tableflip.ControlRequest
			json.Unmarshal([]byte(line), &req)
			c.Write([]byte(answer(req.Cmd) + "\n"))
			c.Close()
		}
	}()
	return sock
}

// TestUpgradeCommandFailures: failed and refused upgrades, a socket that
// does not answer, and bad usage each give their exit status and reason.
func TestUpgradeCommandFailures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string
		code   int
		want   []string
	}{
		{"child exited", `{"v":1,"ok":false,"error":{"reason":"child_exited","message":"tableflip: new generation exited before it was ready (pid 77, exit status 1)","pid":77,"exit_code":1}}`,
			exitFailed, []string{"exited before it was ready (pid 77, exit status 1) [child_exited]"}},
		{"timeout", `{"v":1,"ok":false,"error":{"reason":"timeout","message":"m","pid":78,"exit_code":-1,"signal":"SIGKILL"}}`,
			exitFailed, []string{"did not become ready in time (pid 78, killed by SIGKILL) [timeout]"}},
		{"in progress", `{"v":1,"ok":false,"error":{"reason":"in_progress","message":"tableflip: an upgrade is already in progress"}}`,
			exitFailed, []string{"another upgrade is running [in_progress]", "already in progress"}},
		{"at the cap", `{"v":1,"ok":false,"error":{"reason":"too_many_generations","message":"tableflip: too many generations alive"}}`,
			exitFailed, []string{"as many generations as tableflip.Options.MaxGenerations allows are alive; ask again once one has drained (Options.DrainTimeout bounds how long that takes) [too_many_generations]"}},
		{"parent running", `{"v":1,"ok":false,"error":{"reason":"parent_running","message":"tableflip: the previous generation has not exited yet"}}`,
			exitFailed, []string{"ask again once it has drained, or let upgrades overlap a drain (tableflip.Options.MaxGenerations above 1) and bound drains (Options.DrainTimeout) [parent_running]"}},
		{"garbage", `not json`, exitServer, []string{"malformed answer"}},
	} {
		sock := fakeControl(t, tc.answer)
		code, out, errOut := runCmd("upgrade", "-socket", sock)
		if code != tc.code || out != "" {
			t.Errorf("%s: exit %d, stdout %q; want exit %d", tc.name, code, out, tc.code)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: stderr %q, want %q", tc.name, errOut, w)
			}
		}
	}

	code, _, errOut := runCmd("upgrade", "-socket", filepath.Join(t.TempDir(), "none"))
	if code != exitServer || !strings.Contains(errOut, "no such file") {
		t.Errorf("missing socket: exit %d: %s", code, errOut)
	}
	// A server that never answers: -timeout.
	sock := filepath.Join(t.TempDir(), "mute.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	code, _, errOut = runCmd("upgrade", "-socket", sock, "-timeout", "100ms")
	if code != exitServer || !strings.Contains(errOut, "no answer from") || !strings.Contains(errOut, "see tableflip status") {
		t.Errorf("mute server: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{{"upgrade"}, {"status", "-socket", sock, "extra"}, {"status", "-timeout", "-1s", "-socket", sock}} {
		if code, _, errOut := runCmd(args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
	}
}

// A refusal at the generation cap says which generations are alive.
func TestUpgradeAtTheCapListsGenerations(t *testing.T) {
	sock := fakeControlBy(t, func(cmd string) string {
		if cmd == tableflip.ControlStatus {
			return `{"v":1,"ok":true,"status":{"pid":10,"generation":3,"started":"2026-01-02T03:04:05Z","ready":true,` +
				`"generations":[{"pid":8,"generation":1,"draining_since":"2026-01-02T03:04:05Z","conns":1},` +
				`{"pid":9,"generation":2,"draining_since":"2026-01-02T03:04:05Z","conns":1},{"pid":10,"generation":3,"conns":2}]}}`
		}
		return `{"v":1,"ok":false,"error":{"reason":"too_many_generations","message":"tableflip: too many generations alive"}}`
	})
	code, _, errOut := runCmd("upgrade", "-socket", sock)
	want := "alive now: 3 generations: generation 1 (pid 8, draining), generation 2 (pid 9, draining), generation 3 (pid 10, serving)"
	if code != exitFailed || !strings.Contains(errOut, want) {
		t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitFailed, want)
	}
}

func TestFmtAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                          "0s",
		0:                                     "0ms",
		350 * time.Millisecond:                "350ms",
		time.Second:                           "1s",
		59*time.Second + 999*time.Millisecond: "59s",
		3*time.Minute + 5*time.Second:         "3m05s",
		2*time.Hour + 7*time.Minute + 59*time.Second: "2h07m",
		76 * time.Hour: "3d04h",
	} {
		if got := fmtAge(d); got != want {
			t.Errorf("fmtAge(%v) = %q, want %q", d, got, want)
		}
	}
}

// status prints how long ago the server started, which the generation's
// clock and the command's agree on.
func TestStatusStartedAgo(t *testing.T) {
	var b bytes.Buffer
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	writeStatus(&b, &tableflip.Stats{PID: 1, Generation: 1, Started: now.Add(-90 * time.Second)}, now)
	if want := "started       2026-01-02T03:02:35Z (1m30s ago)\n"; !strings.Contains(b.String(), want) {
		t.Errorf("status:\n%s\nwant %q", b.String(), want)
	}
}

func TestStatusText(t *testing.T) {
	answer := `{"v":1,"ok":true,"status":{"pid":10,"generation":3,"parent_pid":9,"started":"2026-01-02T03:04:05Z","ready":true,` +
		`"upgrading":false,"exiting":false,"upgrades_attempted":2,"upgrades_succeeded":1,"upgrades_failed":1,` +
		`"last_failure":{"reason":"child_exited","message":"boom","pid":11,"exit_code":2},"last_failure_at":"2026-01-02T03:05:00Z","draining":[9],` +
		`"generations":[{"pid":9,"generation":2,"age_seconds":125,"draining_since":"2026-01-02T03:04:05Z","conns":7},` +
		`{"pid":10,"generation":3,"age_seconds":65,"conns":-1}]}}`
	code, out, errOut := runCmd("status", "-socket", fakeControl(t, answer))
	for _, want := range []string{
		"pid           10\n", "generation    3\n", "parent pid    9 (still running, draining)\n",
		"started       2026-01-02T03:04:05Z (", "ready         yes\n",
		"upgrades      2 attempted, 1 succeeded, 1 failed\n",
		"last failure  2026-01-02T03:05:00Z: failed: the new generation exited before it was ready (pid 11, exit status 2) [child_exited]\n              boom\n",
		"generations   (oldest first)\n  pid 9        generation 2    age 2m05s    7 conns    draining for ",
		"  pid 10       generation 3    age 1m05s    conns ?    serving\n",
	} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("status: exit %d, output:\n%s%s\nwant %q", code, out, errOut, want)
		}
	}
}

// TestCheckThroughControlSocket: check upgrades the sample server through
// its control socket instead of a signal.
func TestCheckThroughControlSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	code, stdout, _ := runCheckCmd(t, "-upgrades", "2", "-interval", "10ms", "-c", "1", "-mode", "keepalive,newconn", "-control", sock, "-json")
	if code != exitOK {
		t.Fatalf("exit %d, want %d", code, exitOK)
	}
	var rep report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("bad JSON: %v", err)
	}
	if !rep.Pass || rep.Failed != 0 || len(rep.Upgrades) != 2 || !strings.Contains(rep.Signal, "control socket") {
		t.Errorf("report: pass %v, %d failed, %d upgrades, signal %q", rep.Pass, rep.Failed, len(rep.Upgrades), rep.Signal)
	}
	for _, u := range rep.Upgrades {
		if u.NewPID == 0 || u.NewPID == u.OldPID || !u.OldExited {
			t.Errorf("upgrade %d: %+v", u.N, u)
		}
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket after the check stopped the server: %v", err)
	}
}
