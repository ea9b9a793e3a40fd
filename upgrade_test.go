//go:build unix

package tableflip

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/proc"
)

// The policy of an upgrade, in process: env.start runs the new generation
// as a second Upgrader of this process, on a goroutine, so that refusals,
// Stop and timeouts are tested without starting processes, on every unix.
// The real-process tests (*_linux_test.go) cover what processes add.

// inProcess is a new generation run by startInProcess.
type inProcess struct {
	done   chan struct{}
	status proc.Status
	// signals are the signals the parent sent it.
	mu      sync.Mutex
	signals []syscall.Signal
	// term is closed by SIGTERM, kill by SIGKILL.
	term, kill         chan struct{}
	termOnce, killOnce sync.Once
}

func (p *inProcess) PID() int              { return os.Getpid() }
func (p *inProcess) Sibling() bool         { return false }
func (p *inProcess) Done() <-chan struct{} { return p.done }
func (p *inProcess) Status() proc.Status   { <-p.done; return p.status }
func (p *inProcess) Signal(s syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signals = append(p.signals, s)
	switch s {
	case syscall.SIGTERM:
		p.termOnce.Do(func() { close(p.term) })
	case syscall.SIGKILL:
		p.killOnce.Do(func() { close(p.kill) })
	}
	return nil
}

func (p *inProcess) signalled() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.signals)
}

// program is what an in-process new generation does with its Upgrader; it
// returns the exit status. term is closed when the parent sends SIGTERM.
type program func(u *Upgrader, term <-chan struct{}) int

// inProcessEnv returns an environment whose upgrades start run as the new
// generation, and the new generations it started, in order.
func inProcessEnv(t *testing.T, opts Options, run program) (*osEnv, func() []*inProcess) {
	var (
		mu      sync.Mutex
		started []*inProcess
	)
	t.Cleanup(func() {
		// Every new generation ends with the test, as its process
		// would with the test's process group.
		mu.Lock()
		defer mu.Unlock()
		for _, p := range started {
			p.Signal(syscall.SIGKILL)
			<-p.done
		}
	})
	env := &osEnv{
		lookupEnv: func(string) (string, bool) { return "", false },
		unsetenv:  func(string) error { return nil },
		environ:   func() []string { return nil },
		getppid:   os.Getppid,
		args:      os.Args,
		wd:        t.TempDir(),
	}
	env.start = func(path string, args, environ []string, dir string, handoverEnd *os.File) (process, error) {
		// The handover socket is descriptor 3 in a new process; here it
		// is a duplicate of the parent's end, wherever it lands.
		fd, err := dup.Conn(handoverEnd)
		if err != nil {
			return nil, err
		}
		value := strings.TrimPrefix(environ[0], handover.EnvVar+"=")
		he, err := handover.ParseEnv(value)
		if err != nil {
			return nil, err
		}
		he.FD = fd
		childEnv := *env
		childEnv.lookupEnv = func(name string) (string, bool) {
			if name == handover.EnvVar {
				return he.String(), true
			}
			return "", false
		}
		childEnv.getppid = os.Getpid
		p := &inProcess{done: make(chan struct{}), term: make(chan struct{}), kill: make(chan struct{})}
		mu.Lock()
		started = append(started, p)
		mu.Unlock()
		go func() {
			defer close(p.done)
			code := make(chan int, 1)
			children := make(chan *Upgrader, 1)
			go func() {
				c, err := newUpgrader(&childEnv, opts)
				children <- c
				if err != nil {
					code <- 1
					return
				}
				code <- run(c, p.term)
			}()
			select {
			case c := <-code:
				p.status = proc.Status{Known: true, ExitCode: c}
			case <-p.kill:
				p.status = proc.Status{Known: true, ExitCode: -1, Signal: syscall.SIGKILL}
			}
			// The process is gone: so are its sockets.
			if child := <-children; child != nil {
				child.Stop()
				<-child.Exit()
				child.Fds.closeUsed(false)
			}
		}()
		return p, nil
	}
	return env, func() []*inProcess {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(started)
	}
}

// readyUpgrader is a first generation in env, ready.
func readyUpgrader(t *testing.T, env *osEnv, opts Options) *Upgrader {
	t.Helper()
	u, err := newUpgrader(env, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		u.Stop()
		<-u.Exit()
		if u.successor != nil {
			u.successor.conn.Close()
		}
	})
	if _, err := u.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	return u
}

// listenAndReady is a new generation that takes its socket and gets ready,
// then serves until its parent stops it.
func listenAndReady(u *Upgrader, term <-chan struct{}) int {
	if _, err := u.Listen("tcp", "127.0.0.1:0"); err != nil {
		return 1
	}
	if err := u.Ready(); err != nil {
		return 1
	}
	<-term
	return 0
}

func TestPolicyUpgradeSucceeds(t *testing.T) {
	opts := Options{PIDFile: "app.pid"}
	env, started := inProcessEnv(t, opts, listenAndReady)
	u := readyUpgrader(t, env, opts)
	if err := u.Upgrade(); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	select {
	case <-u.Exit():
	default:
		t.Error("Exit not closed after a successful upgrade")
	}
	if err := u.Upgrade(); !errors.Is(err, ErrUpgraded) {
		t.Errorf("Upgrade after a successful one: %v, want ErrUpgraded", err)
	}
	if st := u.Stats(); st.UpgradesSucceeded != 1 || st.UpgradesAttempted != 1 {
		t.Errorf("Stats after one upgrade: %+v", st)
	}
	if n := len(started()); n != 1 {
		t.Errorf("%d new generations started, want 1", n)
	}
}

func TestPolicyRefusals(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	opts := Options{UpgradeTimeout: time.Minute}
	env, started := inProcessEnv(t, opts, func(u *Upgrader, term <-chan struct{}) int {
		select {
		case <-hang:
		case <-term:
		}
		return 1
	})

	u, err := newUpgrader(env, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Upgrade(); !errors.Is(err, ErrNotReady) {
		t.Errorf("Upgrade before Ready: %v, want ErrNotReady", err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}

	result := make(chan error, 1)
	go func() { result <- u.Upgrade() }()
	waitFor(t, "the new generation to start", func() bool { return len(started()) == 1 })
	if err := u.Upgrade(); !errors.Is(err, ErrUpgradeInProgress) {
		t.Errorf("Upgrade while one runs: %v, want ErrUpgradeInProgress", err)
	}

	// Stop while the new generation initialises: it is sent SIGTERM,
	// the pending Upgrade says stopped, and no more upgrades start.
	u.Stop()
	if err := <-result; !errors.Is(err, ErrStopped) {
		t.Errorf("Upgrade pending at Stop: %v, want ErrStopped", err)
	}
	<-u.Exit()
	if got := started()[0].signalled(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
		t.Errorf("new generation got signals %v, want SIGTERM", got)
	}
	if err := u.Upgrade(); !errors.Is(err, ErrStopped) {
		t.Errorf("Upgrade after Stop: %v, want ErrStopped", err)
	}
	if st := u.Stats(); st.UpgradesAttempted != 1 || st.UpgradesFailed != 1 {
		t.Errorf("Stats: %+v, want one attempted and failed; refusals are not counted", st)
	}
}

func TestPolicyParentRunning(t *testing.T) {
	// The new generation tries to upgrade at once: its parent (this
	// process) is alive, so it is refused, and says what to do.
	refusal := make(chan error, 1)
	opts := Options{}
	env, _ := inProcessEnv(t, opts, func(u *Upgrader, term <-chan struct{}) int {
		if err := u.Ready(); err != nil {
			refusal <- err
			return 1
		}
		refusal <- u.Upgrade()
		<-term
		return 0
	})
	u := readyUpgrader(t, env, opts)
	if err := u.Upgrade(); err != nil {
		t.Fatal(err)
	}
	err := <-refusal
	if !errors.Is(err, ErrParentRunning) || !strings.Contains(err.Error(), "Options.MaxGenerations") {
		t.Errorf("upgrade in a new generation whose parent drains: %v, want ErrParentRunning naming MaxGenerations", err)
	}
}

func TestPolicyTimeout(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ignoreTerm bool
		want       []syscall.Signal
	}{
		{"honours SIGTERM", false, []syscall.Signal{syscall.SIGTERM}},
		{"ignores SIGTERM", true, []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hang := make(chan struct{})
			defer close(hang)
			// The grace between SIGTERM and SIGKILL is
			// min(5s, UpgradeTimeout).
			opts := Options{UpgradeTimeout: 50 * time.Millisecond}
			env, started := inProcessEnv(t, opts, func(u *Upgrader, term <-chan struct{}) int {
				if tc.ignoreTerm {
					term = hang
				}
				<-term
				return 0
			})
			u := readyUpgrader(t, env, opts)
			err := u.Upgrade()
			var ce *ChildError
			if !errors.Is(err, ErrTimeout) || !errors.As(err, &ce) {
				t.Fatalf("Upgrade of a generation that never gets ready: %v, want ErrTimeout in a ChildError", err)
			}
			if got := started()[0].signalled(); !slices.Equal(got, tc.want) {
				t.Errorf("signals sent: %v, want %v", got, tc.want)
			}
			if tc.ignoreTerm && ce.Signal != syscall.SIGKILL {
				t.Errorf("ChildError %+v, want killed by SIGKILL", ce)
			}
		})
	}
}

func TestPolicyStopBeforeReady(t *testing.T) {
	opts := Options{}
	ready := make(chan error, 1)
	var runs atomic.Int32
	env, _ := inProcessEnv(t, opts, func(u *Upgrader, term <-chan struct{}) int {
		if runs.Add(1) > 1 {
			return listenAndReady(u, term)
		}
		u.Stop()
		ready <- u.Ready()
		return 1
	})
	u := readyUpgrader(t, env, opts)
	err := u.Upgrade()
	if !errors.Is(err, ErrHandover) || !strings.Contains(err.Error(), ErrStopped.Error()) {
		t.Errorf("Upgrade to a generation stopped before Ready: %v, want its refusal", err)
	}
	if err := <-ready; !errors.Is(err, ErrStopped) {
		t.Errorf("Ready after Stop: %v, want ErrStopped", err)
	}
	if err := u.Upgrade(); err != nil {
		t.Errorf("the next upgrade: %v", err)
	}
}

// TestPolicyObservers: the observers see each step, in order.
func TestPolicyObservers(t *testing.T) {
	opts := Options{}
	env, _ := inProcessEnv(t, opts, listenAndReady)
	u, err := newUpgrader(env, opts)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	u.observers = append(u.observers, rec)
	u.Upgrade()
	u.Ready()
	if err := u.Upgrade(); err != nil {
		t.Fatal(err)
	}
	want := []string{"refused tableflip: process is not ready yet", "ready", "upgradeStarting", fmt.Sprintf("childStarted %d", os.Getpid()), fmt.Sprintf("upgradeDone %d <nil>", os.Getpid())}
	if got := rec.events(); !slices.Equal(got, want) {
		t.Errorf("observers saw\n\t%q\nwant\n\t%q", got, want)
	}
	u.successor.conn.Close()
}

type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func (r *recorder) ready()                         { r.add("ready") }
func (r *recorder) refused(err error)              { r.add("refused %v", err) }
func (r *recorder) upgradeStarting()               { r.add("upgradeStarting") }
func (r *recorder) childStarted(pid int)           { r.add("childStarted %d", pid) }
func (r *recorder) upgradeDone(pid int, err error) { r.add("upgradeDone %d %v", pid, err) }
func (r *recorder) stopping()                      { r.add("stopping") }

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within a minute", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLogAttributes: the library never logs a "pid" attribute of its own,
// so that a program's logger.With("pid", os.Getpid()) stays the only one:
// no record of an upgrade has the key twice.
func TestLogAttributes(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil)).With("pid", os.Getpid())
	opts := Options{Logger: logger}
	env, _ := inProcessEnv(t, opts, listenAndReady)
	u := readyUpgrader(t, env, opts)
	if err := u.Upgrade(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 5 {
		t.Fatalf("only %d records logged:\n%s", len(lines), buf.String())
	}
	for _, line := range lines {
		if n := strings.Count(line, `"pid":`); n != 1 {
			t.Errorf("record with %d \"pid\" keys, want the program's alone: %s", n, line)
		}
	}
}

// syncBuffer is a bytes.Buffer for several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
