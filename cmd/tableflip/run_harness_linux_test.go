package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
	"github.com/seed589fcc9d/tableflip/internal/proctree"
	"github.com/seed589fcc9d/tableflip/systemd"
)

// The tests of tableflip run start the test binary as the supervisor
// (TestMain hands "run" and its hidden commands to run), and as the
// program the helper "run-program", whose behaviour the variable
// runModeEnv chooses: see runProgram.

// runModeEnv chooses what a generation of the helper program does: a
// comma-separated list (see runProgram), or "file:PATH" to read that list
// from PATH when the generation starts, so that a test can change what
// the next generation does.
const runModeEnv = "TABLEFLIP_RUN_TEST_MODE"

func init() {
	registerHelper("run-program", runProgram)
}

// Bounds of the waits in these tests.
const (
	runWait  = 20 * time.Second // a start, an upgrade, a stop
	httpWait = 5 * time.Second  // one request
)

// runProgram is a generation of a program started by tableflip run, as
// systemd would start one: its socket is fd 3 (LISTEN_PID names it), it
// serves HTTP on it, answering "pid N mode M", and it drains on SIGTERM.
// The mode's words:
//
//	exit=N         exit N at once, before anything
//	hang           never ready; exit 7 on SIGTERM
//	quiet          never send READY=1 (for -ready probes)
//	wait=D         wait D before serving and READY=1
//	marker=PATH    write PATH just before accepting
//	die=D          exit 1, D after it is ready
//	ignore-term    ignore SIGTERM (the drain deadline's SIGKILL ends it)
//	status=TEXT    send STATUS=TEXT with READY=1
//	hold=FIFO      on SIGTERM, drain only once FIFO is opened for writing
//	stop-on=SIG    drain on SIG instead of SIGTERM (which then kills it)
func runProgram(_, _ string) int {
	mode := os.Getenv(runModeEnv)
	if path, ok := strings.CutPrefix(mode, "file:"); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		mode = strings.TrimSpace(string(b))
	}
	words := map[string]string{}
	for _, w := range strings.Split(mode, ",") {
		k, v, _ := strings.Cut(w, "=")
		words[k] = v
	}
	if v, ok := words["exit"]; ok {
		code, _ := strconv.Atoi(v)
		return code
	}
	terms := make(chan os.Signal, 1)
	stopSig := syscall.SIGTERM
	if name, ok := words["stop-on"]; ok {
		stopSig, _ = parseSignal(name)
	}
	if _, ok := words["ignore-term"]; ok {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(terms, stopSig)
	}
	if os.Getenv(systemd.EnvListenPID) != strconv.Itoa(os.Getpid()) || os.Getenv(systemd.EnvListenFds) == "" {
		fmt.Fprintf(os.Stderr, "run-program: LISTEN_PID=%s LISTEN_FDS=%s, want this pid (%d) and sockets\n",
			os.Getenv(systemd.EnvListenPID), os.Getenv(systemd.EnvListenFds), os.Getpid())
		return 2
	}
	if _, ok := words["hang"]; ok {
		<-terms
		return 7
	}
	if d, err := time.ParseDuration(words["wait"]); err == nil {
		time.Sleep(d) // what the program under test does, not a wait of the test
	}
	f := os.NewFile(3, "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "run-program:", err)
		return 2
	}
	// drain, as the README's program: http.Server.Shutdown alone loses
	// requests on connections it accepted just before.
	srv := drain.NewServer(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "pid %d mode %s\n", os.Getpid(), mode)
	})}, drain.Options{})
	if path := words["marker"]; path != "" {
		os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	go srv.Serve(ln)
	if _, ok := words["quiet"]; !ok {
		n, err := systemd.NewNotifier()
		if err != nil {
			fmt.Fprintln(os.Stderr, "run-program:", err)
			return 2
		}
		states := []string{systemd.Ready}
		if st, ok := words["status"]; ok {
			states = append(states, systemd.Status(st))
		}
		if err := n.Notify(states...); err != nil {
			fmt.Fprintln(os.Stderr, "run-program:", err)
			return 2
		}
	}
	var die <-chan time.Time
	if d, err := time.ParseDuration(words["die"]); err == nil {
		die = time.After(d)
	}
	select {
	case <-terms:
	case <-die:
		return 1
	}
	// What a program on the library says at its final Stop, and what no
	// generation may make the supervisor tell systemd.
	if n, err := systemd.NewNotifier(); err == nil {
		n.Notify(systemd.Stopping, systemd.MainPID(os.Getpid()))
	}
	if fifo := words["hold"]; fifo != "" {
		if f, err := os.Open(fifo); err == nil {
			f.Close()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Drain(ctx)
	return 0
}

// runProc is one tableflip run started by a test.
type runProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	dir     string
	addr    string // the TCP socket the program gets
	control string
	pidFile string

	mu    sync.Mutex
	lines []string      // the supervisor's and the program's output
	more  chan struct{} // closed and replaced when lines grows
	done  chan struct{} // closed when the supervisor has exited
	state *os.ProcessState
}

// runOptions say how to start tableflip run.
type runOptions struct {
	addr    string   // the program's TCP socket; "": a free port
	flags   []string // besides -listen, -control and -pidfile
	mode    string   // runModeEnv
	program []string // instead of the helper program
	exe     string   // the supervisor's executable, instead of the test binary
	wrap    []string // a command that runs the supervisor (systemd-socket-activate)
	env     []string
	// noListen leaves -listen out: the sockets come from wrap.
	noListen bool
}

// startRun starts tableflip run with a TCP socket on a free loopback port,
// a control socket and a PID file in a directory of the test's, and waits
// until it has written the PID file (its first generation is ready).
func startRun(t *testing.T, o runOptions) *runProc {
	t.Helper()
	r := launchRun(t, o)
	r.waitLog(`msg="tableflip run: generation ready" generation=1 `)
	if pid, ok := readPIDFile(r.pidFile); !ok || pid != r.cmd.Process.Pid {
		t.Fatalf("PID file %s: pid %d (%v) after the first generation was ready; want the supervisor's, %d", r.pidFile, pid, ok, r.cmd.Process.Pid)
	}
	return r
}

// launchRun starts tableflip run and returns at once.
func launchRun(t *testing.T, o runOptions) *runProc {
	t.Helper()
	return launchRunPrepared(t, o, nil)
}

// launchRunPrepared is launchRun with prepare called on the command
// before it starts.
func launchRunPrepared(t *testing.T, o runOptions, prepare func(*exec.Cmd)) *runProc {
	t.Helper()
	usedHelpers["run-program"] = true
	dir := t.TempDir()
	addr := o.addr
	if addr == "" {
		addr = freeAddr(t)
	}
	exe, err := o.exe, error(nil)
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			t.Fatal(err)
		}
	}
	r := &runProc{
		t: t, dir: dir, addr: addr,
		control: filepath.Join(dir, "control.sock"), pidFile: filepath.Join(dir, "run.pid"),
		more: make(chan struct{}), done: make(chan struct{}),
	}
	args := []string{"run", "-control", r.control, "-pidfile", r.pidFile}
	if !o.noListen {
		args = append(args, "-listen", "web=tcp://"+addr)
	}
	args = append(args, o.flags...)
	program := o.program
	if program == nil {
		self, _ := os.Executable()
		// env sets the helper's variable for the program alone, and
		// execs it in the same process (LISTEN_PID stays true).
		program = []string{"/usr/bin/env", helperEnv + "=run-program", self, "x", "y"}
	}
	args = append(append(args, "--"), program...)
	args = append([]string{exe}, args...)
	if o.wrap != nil {
		args = append(append([]string(nil), o.wrap...), args...)
	}
	r.cmd = exec.Command(args[0], args[1:]...)
	r.cmd.Dir = dir
	r.cmd.Env = append(os.Environ(), runModeEnv+"="+o.mode, "GORACE=atexit_sleep_ms=0")
	r.cmd.Env = append(r.cmd.Env, o.env...)
	out, err := r.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stdout = r.cmd.Stderr
	if prepare != nil {
		prepare(r.cmd)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go r.read(out)
	t.Cleanup(r.cleanup)
	return r
}

func (r *runProc) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		r.mu.Lock()
		r.lines = append(r.lines, sc.Text())
		close(r.more)
		r.more = make(chan struct{})
		r.mu.Unlock()
	}
	r.cmd.Wait()
	r.mu.Lock()
	r.state = r.cmd.ProcessState
	r.mu.Unlock()
	close(r.done)
}

// cleanup kills what is left of a supervisor that a test did not stop.
func (r *runProc) cleanup() {
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	if r.t.Failed() {
		r.t.Logf("output of tableflip run:\n%s", r.output())
	}
}

func (r *runProc) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// waitLog waits until a line of the output contains text, and returns it.
func (r *runProc) waitLog(text string) string {
	r.t.Helper()
	line, err := r.awaitLog(text, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	return line
}

// awaitLog waits for a line containing text, after the first from lines.
func (r *runProc) awaitLog(text string, from int) (string, error) {
	deadline := time.NewTimer(runWait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for _, l := range r.lines[min(from, len(r.lines)):] {
			if strings.Contains(l, text) {
				r.mu.Unlock()
				return l, nil
			}
		}
		more := r.more
		r.mu.Unlock()
		select {
		case <-more:
		case <-r.done:
			r.mu.Lock()
			more = r.more
			r.mu.Unlock()
			select {
			case <-more:
				continue
			default:
			}
			return "", fmt.Errorf("tableflip run exited (%v) without writing a line with %q; its output:\n%s", r.state, text, r.output())
		case <-deadline.C:
			return "", fmt.Errorf("no line with %q in the output of tableflip run within %v:\n%s", text, runWait, r.output())
		}
	}
}

// mark is the number of output lines so far, for awaitLog.
func (r *runProc) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lines)
}

// call sends cmd to the control socket.
func (r *runProc) call(cmd string) *tableflip.ControlResponse {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runWait)
	defer cancel()
	resp, err := tableflip.ControlCall(ctx, r.control, cmd)
	if err != nil {
		r.t.Fatalf("control %s: %v\n%s", cmd, err, r.output())
	}
	return resp
}

func (r *runProc) status() *tableflip.Stats {
	r.t.Helper()
	resp := r.call(tableflip.ControlStatus)
	if !resp.OK {
		r.t.Fatalf("status: %v", resp.Error)
	}
	return resp.Status
}

// serving returns the pid of the serving generation, from status.
func (r *runProc) serving() int {
	r.t.Helper()
	st := r.status()
	if len(st.Generations) == 0 {
		r.t.Fatalf("status lists no generation: %+v", st)
	}
	return st.Generations[len(st.Generations)-1].PID
}

// get asks the program, on a new connection, and returns its answer.
func (r *runProc) get() (string, error) {
	c := http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: httpWait}
	resp, err := c.Get("http://" + r.addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// answerPID is the pid in an answer of the helper program.
func answerPID(answer string) int {
	var pid int
	fmt.Sscanf(answer, "pid %d", &pid)
	return pid
}

// stop sends SIGTERM and waits for the supervisor's exit; it returns the
// exit status.
func (r *runProc) stop() int {
	r.t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	return r.wait()
}

// wait waits for the supervisor's exit.
func (r *runProc) wait() int {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(runWait):
		r.t.Fatalf("tableflip run (pid %d) did not exit within %v:\n%s", r.cmd.Process.Pid, runWait, r.output())
	}
	return r.state.ExitCode()
}

// gone reports whether pid has exited (and been reaped, or is a zombie).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	st, ok := proctree.ReadStat(pid)
	return !ok || st.State == "Z"
}
