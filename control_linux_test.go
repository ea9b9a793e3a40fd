//go:build linux

package tableflip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/peercred"
)

const (
	// controlEnv is the helper server's Options.ControlSocket, and
	// controlGroupEnv its ControlSocketGroup.
	controlEnv      = "TABLEFLIP_TEST_CONTROL"
	controlGroupEnv = "TABLEFLIP_TEST_CONTROL_GROUP"
	// controlReadTimeoutEnv shortens the wait for a request line.
	controlReadTimeoutEnv = "TABLEFLIP_TEST_CONTROL_READ_TIMEOUT"
	// controlCmdEnv is the command the ctlclient helper sends.
	controlCmdEnv = "TABLEFLIP_TEST_CONTROL_CMD"
)

func init() {
	registerHelper("ctlclient", helperControlClient)
	if d, err := time.ParseDuration(os.Getenv(controlReadTimeoutEnv)); err == nil {
		controlReadTimeout = d
	}
}

// helperControlClient sends one command to the control socket and prints
// the answer as JSON, or "error: …" if there was none.
func helperControlClient() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := ControlCall(ctx, os.Getenv(controlEnv), os.Getenv(controlCmdEnv))
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	b, _ := json.Marshal(resp)
	fmt.Println(string(b))
	return 0
}

func control(t *testing.T, path, cmd string) *ControlResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := ControlCall(ctx, path, cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if resp.V != ControlVersion {
		t.Errorf("%s: answer of version %d", cmd, resp.V)
	}
	return resp
}

func status(t *testing.T, path string) *Stats {
	t.Helper()
	resp := control(t, path, ControlStatus)
	if !resp.OK || resp.Status == nil {
		t.Fatalf("status: %+v", resp)
	}
	return resp.Status
}

// controlUpgrade upgrades through the control socket, expecting success,
// and follows the harness to the new generation as server.upgrade does.
func (s *server) controlUpgrade(t *testing.T, path string) *UpgradeOutcome {
	t.Helper()
	old := s.pid
	resp := control(t, path, ControlUpgrade)
	if !resp.OK || resp.Upgrade == nil {
		t.Fatalf("upgrade of pid %d: %+v %+v", old, resp, resp.Error)
	}
	fields := s.waitLine("ready ")
	s.pid, _ = strconv.Atoi(fields[1])
	if resp.Upgrade.PID != s.pid {
		t.Errorf("upgrade answered pid %d, but pid %d became ready", resp.Upgrade.PID, s.pid)
	}
	if resp.Upgrade.Seconds <= 0 {
		t.Errorf("upgrade took %v seconds", resp.Upgrade.Seconds)
	}
	s.waitEvent(old, "exiting")
	s.reap(old)
	if got := s.command("waitparent"); got != "<nil>" {
		t.Fatalf("WaitForParent in pid %d: %s", s.pid, got)
	}
	return resp.Upgrade
}

// TestControlUpgrades upgrades three times through the control socket:
// each answer names the new generation, status follows it, the same path
// reaches it, and a final Stop removes the socket file.
func TestControlUpgrades(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s := startServer(t, serverConfig{env: []string{controlEnv + "=" + path}})

	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode()&os.ModeSocket == 0 || info.Mode().Perm() != 0o600 {
		t.Errorf("control socket file mode %s, want a socket with 0600", info.Mode())
	}
	st := status(t, path)
	if st.PID != s.pid || st.Generation != 1 || st.ParentPID != 0 || !st.Ready || st.Upgrading || st.Exiting ||
		st.UpgradesAttempted != 0 || st.LastFailure != nil || len(st.Draining) != 0 || time.Since(st.Started) > time.Minute {
		t.Errorf("status of the first generation: %+v", st)
	}

	for i := range 3 {
		old := s.pid
		out := s.controlUpgrade(t, path)
		if out.Generation != uint64(i+2) {
			t.Errorf("upgrade %d: generation %d, want %d", i+1, out.Generation, i+2)
		}
		st := status(t, path)
		if st.PID != s.pid || st.Generation != uint64(i+2) || st.ParentPID != old || !st.Ready || st.UpgradesAttempted != 0 {
			t.Errorf("upgrade %d: status %+v, want pid %d generation %d parent %d", i+1, st, s.pid, i+2, old)
		}
		if len(st.Draining) != 0 {
			t.Errorf("upgrade %d: draining %v after the parent exited", i+1, st.Draining)
		}
	}

	if got := s.command("stop"); got != "stopped" {
		t.Fatalf("stop: got %q", got)
	}
	s.waitEvent(s.pid, "exiting")
	s.reap(s.pid)
	s.pid = 0
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("control socket after a final Stop: %v, want it removed", err)
	}
}

// TestControlUpgradeFailures: a child that exits in init and one that
// times out are reported with their reason and status; the counters and
// the last failure follow; the server upgrades fine afterwards.
func TestControlUpgradeFailures(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s := startServer(t, serverConfig{env: []string{controlEnv + "=" + path, timeoutEnv + "=2s"}})

	for i, tc := range []struct {
		mode, reason, signal string
		exitCode             int
	}{
		{"exit1", ReasonChildExited, "", 1},
		{"hang", ReasonTimeout, "SIGTERM", -1},
	} {
		s.setMode(tc.mode)
		resp := control(t, path, ControlUpgrade)
		e := resp.Error
		if resp.OK || e == nil || e.Reason != tc.reason || e.PID == 0 || e.PID == s.pid ||
			e.ExitCode == nil || *e.ExitCode != tc.exitCode || e.Signal != tc.signal {
			t.Errorf("upgrade to a child in mode %s: %+v %+v, want reason %s, exit code %d, signal %q",
				tc.mode, resp, e, tc.reason, tc.exitCode, tc.signal)
		}
		st := status(t, path)
		n := uint64(i + 1)
		if st.PID != s.pid || st.UpgradesAttempted != n || st.UpgradesFailed != n || st.UpgradesSucceeded != 0 ||
			st.Upgrading || st.LastFailure == nil || st.LastFailure.Reason != tc.reason || st.LastFailureAt.IsZero() {
			t.Errorf("status after mode %s: %+v, last failure %+v", tc.mode, st, st.LastFailure)
		}
	}

	s.setMode("serve")
	old := s.pid
	s.controlUpgrade(t, path)
	st := status(t, path)
	if st.Generation != 2 || st.ParentPID != old {
		t.Errorf("status after a good upgrade: %+v", st)
	}
}

// TestControlUpgradeInProgress: a second upgrade while one runs is
// refused, status shows the one under way, and the first then reports
// its new generation.
func TestControlUpgradeInProgress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s := startServer(t, serverConfig{env: []string{controlEnv + "=" + path, timeoutEnv + "=1m"}})
	fifo := filepath.Join(s.dir, "mode.go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s.setMode("wait-before-ready")
	first := make(chan *ControlResponse, 1)
	go func() {
		resp, err := ControlCall(context.Background(), path, ControlUpgrade)
		if err != nil {
			resp = &ControlResponse{Error: &ControlError{Message: err.Error()}}
		}
		first <- resp
	}()
	fields := s.waitLine("event ")
	if fields[2] != "initialising" {
		t.Fatalf("got %q, want the new generation initialising", fields)
	}
	child, _ := strconv.Atoi(fields[1])

	if resp := control(t, path, ControlUpgrade); resp.OK || resp.Error.Reason != ReasonInProgress {
		t.Errorf("second upgrade while one runs: %+v %+v, want %s", resp, resp.Error, ReasonInProgress)
	}
	// The child has not called Ready: the parent still answers.
	st := status(t, path)
	if st.PID != s.pid || !st.Upgrading || st.UpgradesAttempted != 1 {
		t.Errorf("status during an upgrade: %+v", st)
	}

	s.setMode("serve")
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	resp := <-first
	if !resp.OK || resp.Upgrade == nil || resp.Upgrade.PID != child || resp.Upgrade.Generation != 2 {
		t.Fatalf("first upgrade: %+v %+v, want pid %d generation 2", resp, resp.Error, child)
	}
	old := s.pid
	s.waitLine("ready ")
	s.pid = child
	s.waitEvent(old, "exiting")
	s.reap(old)
	if st := status(t, path); st.PID != child || st.Generation != 2 {
		t.Errorf("status after the upgrade: %+v", st)
	}
}

// TestControlBadRequests: malformed, huge, slow and unknown requests are
// answered with an error, and the server goes on answering.
func TestControlBadRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s := startServer(t, serverConfig{env: []string{controlEnv + "=" + path, controlReadTimeoutEnv + "=300ms"}})

	huge := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		name, send   string
		close        bool
		reason, want string
	}{
		{"not json", "hello\n", false, ReasonBadRequest, "malformed request"},
		{"empty line", "\n", false, ReasonBadRequest, "empty request"},
		{"other version", `{"v":2,"cmd":"status"}` + "\n", false, ReasonBadRequest, "version 2"},
		{"no version", `{"cmd":"status"}` + "\n", false, ReasonBadRequest, "version 0"},
		{"unknown command", `{"v":1,"cmd":"dance"}` + "\n", false, ReasonBadRequest, `unknown command "dance"`},
		{"huge", `{"v":1,"cmd":"` + huge + `"}` + "\n", false, ReasonBadRequest, "longer than 4096 bytes"},
		{"huge without newline", huge, false, ReasonBadRequest, "longer than 4096 bytes"},
		{"slow", `{"v":1,`, false, ReasonTimeout, "no request line within"},
		{"silent", "", false, ReasonTimeout, "no request line within"},
		{"half closed", `{"v":1,"cmd":"status"`, true, ReasonBadRequest, "malformed request"},
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		// Written while the answer is read: the server stops reading
		// a huge request and answers at once.
		go func() {
			io.WriteString(c, tc.send)
			if tc.close {
				c.(*net.UnixConn).CloseWrite()
			}
		}()
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil && len(b) == 0 {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var resp ControlResponse
		if err := json.Unmarshal(b, &resp); err != nil {
			t.Errorf("%s: answer %q: %v", tc.name, b, err)
			continue
		}
		if resp.OK || resp.Error == nil || resp.Error.Reason != tc.reason || !strings.Contains(resp.Error.Message, tc.want) {
			t.Errorf("%s: got %s, want reason %s saying %q", tc.name, b, tc.reason, tc.want)
		}
	}
	// A client that goes away at once harms nothing.
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
	}
	if st := status(t, path); st.PID != s.pid {
		t.Errorf("status after bad requests: pid %d, want %d", st.PID, s.pid)
	}
}

// TestControlOtherUID runs the client as nobody (the test binary,
// re-executed with SysProcAttr.Credential, which needs root): with the
// default mode it cannot connect; with the file opened to everyone, the
// peer-credentials check still refuses it; with ControlSocketGroup set to
// its group it is served.
func TestControlOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root; this test needs it to run a client as nobody")
		}
		t.Skip("needs root to run a client as nobody; allowPeer is tested on its own in TestAllowPeer")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody:", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	group, err := user.LookupGroupId(nobody.Gid)
	if err != nil {
		t.Fatal(err)
	}
	// A directory that nobody can traverse, holding a copy of the test
	// binary that nobody can run (go test's own is in a private
	// directory).
	dir, err := os.MkdirTemp("", "tableflip-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "client")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, self, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func(path string) string {
		t.Helper()
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), helper("ctlclient"), controlEnv+"="+path, controlCmdEnv+"="+ControlStatus)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("client as nobody: %v", err)
		}
		return strings.TrimSpace(string(out))
	}

	path := filepath.Join(dir, "ctl.sock")
	startServer(t, serverConfig{env: []string{controlEnv + "=" + path}})
	if got := asNobody(path); !strings.Contains(got, "permission denied") || !strings.HasPrefix(got, "error:") {
		t.Errorf("nobody on a 0600 socket: %s, want it unable to connect", got)
	}
	// A mode opened by mistake lets nobody connect, but not be served.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	got := asNobody(path)
	var resp ControlResponse
	if err := json.Unmarshal([]byte(got), &resp); err != nil || resp.OK || resp.Error == nil ||
		resp.Error.Reason != ReasonPermission || !strings.Contains(resp.Error.Message, "uid "+nobody.Uid+" may not use it") || resp.Status != nil {
		t.Errorf("nobody on a socket open to all: %s, want a refusal for uid %s", got, nobody.Uid)
	}

	path = filepath.Join(dir, "group.sock")
	startServer(t, serverConfig{env: []string{controlEnv + "=" + path, controlGroupEnv + "=" + group.Name}})
	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o660 || int(info.Sys().(*syscall.Stat_t).Gid) != gid {
		t.Errorf("group socket: mode %s gid %d, want 0660 and gid %d", info.Mode(), info.Sys().(*syscall.Stat_t).Gid, gid)
	}
	got = asNobody(path)
	resp = ControlResponse{}
	if err := json.Unmarshal([]byte(got), &resp); err != nil || !resp.OK || resp.Status == nil {
		t.Errorf("nobody, in group %s, on the group's socket: %s, want served", group.Name, got)
	}
}

// TestControlSocketInUse: New refuses a path that another process serves
// or that is not a socket, and replaces a stale socket file.
func TestControlSocketInUse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ctl.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenControl(path, -1); err == nil || !strings.Contains(err.Error(), "served by another process") {
		t.Errorf("listen on a served path: %v", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	got, err := listenControl(path, -1)
	if err != nil {
		t.Fatalf("listen on a stale socket: %v", err)
	}
	if got.Addr().String() != path {
		t.Errorf("listener address %s, want %s", got.Addr(), path)
	}
	got.Close()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := listenControl(file, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listen on a regular file: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("left in the directory: %v", entries)
	}
}

func TestReasons(t *testing.T) {
	for _, tc := range []struct {
		err    error
		reason string
	}{
		{ErrNotReady, ReasonNotReady},
		{ErrUpgradeInProgress, ReasonInProgress},
		{ErrParentRunning, ReasonParentRunning},
		{ErrStopped, ReasonStopped},
		{ErrUpgraded, ReasonUpgraded},
		{ErrNotSupported, ReasonNotSupported},
		{&ChildError{PID: 9, ExitCode: -1, Signal: syscall.SIGKILL, Err: ErrTimeout}, ReasonTimeout},
		{&ChildError{PID: 9, ExitCode: 3, Err: ErrChildExited}, ReasonChildExited},
		{&ChildError{PID: 9, ExitCode: 1, Err: fmt.Errorf("%w: no", ErrHandover)}, ReasonHandover},
		{&ChildError{PID: 9, ExitCode: -1, Signal: syscall.SIGTERM, Err: ErrStopped}, ReasonStopped},
		{errors.New("tableflip: executable gone"), ReasonFailed},
	} {
		e := controlError(tc.err)
		if e.Reason != tc.reason || e.Message != tc.err.Error() {
			t.Errorf("%v: %+v, want reason %s", tc.err, e, tc.reason)
		}
		var ce *ChildError
		if errors.As(tc.err, &ce) && (e.PID != 9 || *e.ExitCode != ce.ExitCode || (ce.Signal != 0) != strings.HasPrefix(e.Signal, "SIG")) {
			t.Errorf("%v: %+v, want the child's pid, exit code and signal", tc.err, e)
		}
	}
}

// TestAllowPeer is the credentials check on its own, for uids the process
// tests cannot take.
func TestAllowPeer(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cred      peercred.Cred
		euid, gid int
		allow     bool
	}{
		{"same uid", peercred.Cred{UID: 1000, GID: 1000}, 1000, -1, true},
		{"root", peercred.Cred{UID: 0, GID: 0}, 1000, -1, true},
		{"other uid", peercred.Cred{UID: 1001, GID: 1001}, 1000, -1, false},
		{"other uid, same primary group, no group access", peercred.Cred{UID: 1001, GID: 1000}, 1000, -1, false},
		{"group member by primary gid", peercred.Cred{UID: 1001, GID: 50}, 1000, 50, true},
		{"group member by supplementary gid", peercred.Cred{UID: 1001, GID: 7, Groups: []int{7, 50}}, 1000, 50, true},
		{"not a member", peercred.Cred{UID: 1001, GID: 7, Groups: []int{7}}, 1000, 50, false},
	} {
		err := allowPeer(tc.cred, tc.euid, tc.gid)
		if (err == nil) != tc.allow {
			t.Errorf("%s: %v, want allowed %t", tc.name, err, tc.allow)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("uid %d may not use it", tc.cred.UID)) {
			t.Errorf("%s: %v does not name the uid", tc.name, err)
		}
	}
}
