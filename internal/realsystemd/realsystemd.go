//go:build linux

package realsystemd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Options configure a boot.
type Options struct {
	// Usr, if not empty, is a directory overlaid on /usr inside the
	// namespaces, above the machine's /usr: how a systemd other than the
	// machine's is booted (see Backports). Its lib/systemd/systemd is then
	// PID 1.
	Usr string
	// Bin, if not empty, is a directory bound over /usr/local/bin inside.
	// Files replaced in it (by rename) are seen inside at once.
	Bin string
	// Units maps unit file names to their contents. They are installed
	// beside the stub targets and journald's units; none is started.
	Units map[string]string
	// LogLevel is systemd's log level (--log-level=). Empty means info.
	//
	// debug puts every sd_notify datagram and its sender in the journal,
	// but it also misfiles lines: the process systemd forks for a unit
	// logs debug messages of its own before it has moved into the unit's
	// cgroup, journald caches what it learnt about that pid (cgroup,
	// command name) for a while (under two seconds here), and so the
	// first lines the unit's program writes meanwhile are filed under init.scope,
	// _COMM=(name), not under the unit (measured with systemd 252 and
	// 254). That is journald, not the namespaces: at info level every
	// line is filed under its unit.
	LogLevel string
	// BootTimeout bounds the boot. Zero means 30 seconds.
	BootTimeout time.Duration
}

// System is a systemd booted by Boot. Its methods are safe for concurrent
// use.
type System struct {
	// Version is systemd's version number (252, 254, …), from
	// `systemctl --version` inside.
	Version int

	pid    int    // PID 1 of the namespaces, as the machine sees it
	cgroup string // the cgroup directory that is the namespace's root
	state  string // console, boot log, units
	netns  *os.File
	unsh   *exec.Cmd
	exited chan struct{} // closed when unshare has been reaped
	closed atomic.Bool
}

// commandTimeout bounds every command run inside.
const commandTimeout = 30 * time.Second

// Boot starts systemd in new namespaces and waits until it has finished
// booting (`systemctl is-system-running` says running or degraded). It
// registers the tear-down with t.Cleanup; Close may also be called
// earlier. A boot that fails or does not finish in time fails the test
// with systemd's console output and the boot log.
func Boot(t testing.TB, opts Options) *System {
	t.Helper()
	Need(t)
	s, err := boot(t.TempDir(), opts)
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				s.logTail(t)
			}
			if err := s.Close(); err != nil {
				t.Errorf("realsystemd: tear-down: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("realsystemd: boot: %v", err)
	}
	return s
}

func boot(state string, opts Options) (*System, error) {
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	if opts.BootTimeout <= 0 {
		opts.BootTimeout = 30 * time.Second
	}
	units := filepath.Join(state, "units")
	empty := filepath.Join(state, "empty")
	for _, d := range []string{units, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := installUnits(units, opts); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(state, "console"), nil, 0o644); err != nil {
		return nil, err
	}
	cg, err := makeCgroup()
	if err != nil {
		return nil, err
	}
	cgfd, err := os.Open(cg)
	if err != nil {
		os.Remove(cg)
		return nil, err
	}
	defer cgfd.Close()
	bootLog, err := os.Create(filepath.Join(state, "boot.log"))
	if err != nil {
		os.Remove(cg)
		return nil, err
	}
	defer bootLog.Close()

	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation=private",
		"--mount-proc", "--uts", "--net", "--ipc", "--cgroup",
		"--", "/bin/sh", "-c", setupScript, "setup",
		state, opts.Bin, opts.Usr, units, empty, opts.LogLevel)
	cmd.Stdout = bootLog
	cmd.Stderr = bootLog
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Straight into the cgroup, before it unshares the cgroup
		// namespace, so that the namespace's root is that cgroup.
		UseCgroupFD: true,
		CgroupFD:    int(cgfd.Fd()),
		// If the test process dies without tearing down (a panic, a
		// test timeout), unshare dies, and --kill-child takes PID 1
		// and with it the whole pid namespace.
		Pdeathsig: syscall.SIGKILL,
	}
	// Pdeathsig fires when the thread that started unshare ends, not the
	// process. Go ends a thread when a goroutine locked to it returns (as
	// InNetns's do): start unshare from a locked thread that lives until
	// unshare has been reaped.
	started := make(chan error, 1)
	s := &System{cgroup: cg, state: state, unsh: cmd, exited: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(s.exited)
	}()
	if err := <-started; err != nil {
		os.Remove(cg)
		return nil, fmt.Errorf("unshare: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), opts.BootTimeout)
	defer cancel()
	if err := s.waitBooted(ctx); err != nil {
		return s, fmt.Errorf("%w\n%s", err, s.bootOutput())
	}
	return s, nil
}

// setupScript runs as PID 1 of the new namespaces, then becomes systemd.
// Its arguments: the state directory (console), the directory to bind over
// /usr/local/bin, the directory to overlay on /usr, the unit directory, an
// empty directory (no generators), systemd's log level. unshare has
// already made every mount private and mounted a /proc for the new pid
// namespace.
const setupScript = `set -eu
state=$1 bin=$2 usr=$3 units=$4 empty=$5 level=$6
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
mknod -m 666 /dev/tty c 5 0
mkdir /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
# systemd writes to the console: a plain file, never the machine's.
touch /dev/console
mount --bind "$state/console" /dev/console
# As systemd-nspawn does: no sysctl, nothing in /sys can be changed.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
# The cgroup namespace's root is the test's cgroup directory.
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
# journald and systemd must not write the machine's journal or state.
for d in /var/log/journal /var/lib/systemd; do
	if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 tmpfs "$d"; fi
done
if [ -n "$usr" ]; then
	mount -t overlay -o "ro,lowerdir=$usr:/usr" overlay /usr
fi
if [ -n "$bin" ]; then
	mount --bind "$bin" /usr/local/bin
fi
exec env -i container=tableflip-realsystemd \
	SYSTEMD_UNIT_PATH="$units" \
	SYSTEMD_GENERATOR_PATH="$empty" \
	SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$empty" \
	/lib/systemd/systemd --system --unit=multi-user.target --log-level="$level" </dev/null
`

// stubTargets are the targets that systemd's default dependencies name,
// empty but for what pulls in journald.
var stubTargets = map[string]string{
	"sysinit.target": `[Unit]
Description=System Initialization (stub)
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
After=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
`,
	"sockets.target": "[Unit]\nDescription=Sockets (stub)\n",
	"basic.target": `[Unit]
Description=Basic System (stub)
Requires=sysinit.target sockets.target
After=sysinit.target sockets.target
`,
	"multi-user.target": `[Unit]
Description=Multi-User System (stub)
Requires=basic.target
After=basic.target
`,
	"network.target":  "[Unit]\nDescription=Network (stub)\n",
	"local-fs.target": "[Unit]\nDescription=Local File Systems (stub)\n",
	"swap.target":     "[Unit]\nDescription=Swaps (stub)\n",
	"shutdown.target": "[Unit]\nDescription=Shutdown (stub)\nDefaultDependencies=no\n",
}

// journaldUnits are copied from the booted systemd's own unit directory.
var journaldUnits = []string{
	"systemd-journald.service",
	"systemd-journald.socket",
	"systemd-journald-dev-log.socket",
}

func installUnits(dir string, opts Options) error {
	all := map[string]string{}
	for name, text := range stubTargets {
		all[name] = text
	}
	from := "/lib/systemd/system"
	if opts.Usr != "" {
		from = filepath.Join(opts.Usr, "lib/systemd/system")
	}
	for _, name := range journaldUnits {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			return err
		}
		all[name] = string(b)
	}
	for name, text := range opts.Units {
		all[name] = text
	}
	for name, text := range all {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// waitBooted finds PID 1 (unshare's only child), opens its network
// namespace and polls until systemd has booted.
func (s *System) waitBooted(ctx context.Context) error {
	var last string
	for {
		if s.pid == 0 {
			s.pid = onlyChild(s.unsh.Process.Pid)
		}
		if s.pid != 0 && s.netns == nil {
			// Only once PID 1 has become systemd: before that it may
			// not have unshared yet. The namespaces are unshare's, made
			// before it forked, so any moment after the fork is right.
			if f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", s.pid)); err == nil {
				s.netns = f
			}
		}
		if s.netns != nil {
			out, err := s.run(ctx, "systemctl", "is-system-running")
			state := strings.TrimSpace(out)
			switch state {
			case "running", "degraded":
				return s.readVersion(ctx)
			}
			last = fmt.Sprintf("is-system-running: %q (%v)", state, err)
		}
		select {
		case <-s.exited:
			return fmt.Errorf("unshare exited (%v) before systemd booted", s.unsh.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("systemd did not finish booting: %v; last %s", ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *System) readVersion(ctx context.Context) error {
	out, err := s.run(ctx, "systemctl", "--version")
	if err != nil {
		return err
	}
	// "systemd 254 (254.26-1~bpo12+1)"
	f := strings.Fields(out)
	if len(f) < 2 {
		return fmt.Errorf("systemctl --version: %q", out)
	}
	s.Version, err = strconv.Atoi(f[1])
	if err != nil {
		return fmt.Errorf("systemctl --version: %q", out)
	}
	return nil
}

// onlyChild returns the pid of the first child of pid, or 0.
func onlyChild(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// PID1 returns systemd's pid as the machine sees it.
func (s *System) PID1() int { return s.pid }

// console returns what systemd wrote to its console so far.
func (s *System) console() string {
	b, _ := os.ReadFile(filepath.Join(s.state, "console"))
	return string(b)
}

func (s *System) bootOutput() string {
	b, _ := os.ReadFile(filepath.Join(s.state, "boot.log"))
	return fmt.Sprintf("boot log:\n%s\nconsole:\n%s", b, s.console())
}

func (s *System) logTail(t testing.TB) {
	t.Helper()
	out, err := s.Run("journalctl", "--no-pager", "-n", "80")
	t.Logf("systemd %d, last journal lines (%v):\n%s", s.Version, err, out)
}

// Close tears the System down: it kills PID 1, which takes every process
// of the pid namespace with it and so ends the other namespaces, waits for
// unshare, and removes the cgroup directories, deepest first. It is
// bounded; later calls do nothing.
func (s *System) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	var errs []error
	if s.netns != nil {
		s.netns.Close()
	}
	// Nothing inside keeps state that outlives it (its /run is a tmpfs of
	// its own mount namespace), so there is nothing to shut down politely.
	if s.pid != 0 {
		syscall.Kill(s.pid, syscall.SIGKILL)
	}
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.unsh.Process.Kill()
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			errs = append(errs, fmt.Errorf("unshare (pid %d) did not exit", s.unsh.Process.Pid))
		}
	}
	if err := removeCgroup(s.cgroup, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// run runs a program inside every namespace of the System and returns its
// standard output. A failure's error includes the exit status and the
// standard error.
func (s *System) run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	argv := append([]string{"--target", strconv.Itoa(s.pid),
		"--mount", "--pid", "--net", "--uts", "--ipc", "--cgroup", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8",
		"SYSTEMD_PAGER=",
		"SYSTEMD_COLORS=0",
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err != nil {
		err = &RunError{Args: append([]string{name}, args...), Err: err, Stderr: strings.TrimSpace(stderr.String())}
	}
	return stdout.String(), err
}

// RunError is a command run inside that failed.
type RunError struct {
	Args   []string
	Err    error // an *exec.ExitError when the command ran and failed
	Stderr string
}

func (e *RunError) Error() string {
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Args, " "), e.Err, e.Stderr)
}

// Unwrap returns the underlying error.
func (e *RunError) Unwrap() error { return e.Err }

// Run runs a program inside every namespace of the System (bounded by 30
// seconds) and returns its standard output; see RunError.
func (s *System) Run(name string, args ...string) (string, error) {
	return s.run(context.Background(), name, args...)
}

// Systemctl runs systemctl inside with args.
func (s *System) Systemctl(args ...string) (string, error) {
	return s.Run("systemctl", append([]string{"--no-pager"}, args...)...)
}

// Show returns the named properties of unit (systemctl show).
func (s *System) Show(unit string, props ...string) (map[string]string, error) {
	out, err := s.Systemctl("show", "--property="+strings.Join(props, ","), unit)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok {
			m[k] = v
		}
	}
	return m, nil
}

// ReadFile reads a file as the processes inside see it.
func (s *System) ReadFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/root", s.pid), name))
}

// Processes returns the pids, as seen inside, of the processes in a
// unit's cgroup and its sub-cgroups, sorted: controlGroup is the unit's
// ControlGroup property ("/system.slice/name.service"). An exited process
// is never listed, a zombie neither. An empty controlGroup has no
// processes.
func (s *System) Processes(controlGroup string) ([]int, error) {
	if controlGroup == "" {
		return nil, nil
	}
	return s.cgroupProcesses(filepath.Join(s.cgroup, controlGroup))
}

// cgroupProcesses lists the processes under dir, translated to the pids of
// the System's pid namespace (the last NSpid field).
func (s *System) cgroupProcesses(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil // a cgroup removed while we walk
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if p := nsPID(f); p > 0 {
				pids = append(pids, p)
			}
		}
		return nil
	})
	sort.Ints(pids)
	return pids, err
}

// nsPID returns the innermost pid of the machine's process hostPID, or 0
// if it has exited.
func nsPID(hostPID string) int {
	b, err := os.ReadFile("/proc/" + hostPID + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

// Version returns the version of the systemd that Boot would start with
// Options.Usr set to usr ("" for the machine's own), without booting it:
// the number in the name of its libsystemd-shared-NNN.so.
func Version(usr string) (int, error) {
	if usr == "" {
		usr = "/usr"
	}
	libs, _ := filepath.Glob(filepath.Join(usr, "lib/*/systemd/libsystemd-shared-*.so"))
	for _, lib := range libs {
		v := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(lib), "libsystemd-shared-"), ".so")
		if n, err := strconv.Atoi(v); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("realsystemd: no libsystemd-shared-NNN.so under %s/lib", usr)
}
