//go:build linux

package realsystemd

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// cgroupPrefix names the cgroup directories of Systems: the prefix, the
// test process's pid, a sequence number.
const cgroupPrefix = "tableflip-realsystemd-"

var cgroupSeq atomic.Int64

// cgroup2Root returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified on a hybrid
// one).
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 0:30 / /sys/fs/cgroup/unified rw,… - cgroup2 cgroup2 rw
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" && pf[3] == "/" {
			return pf[4], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// ownCgroup returns the directory of the test process's cgroup v2.
func ownCgroup() (string, error) {
	root, err := cgroup2Root()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, path), nil
		}
	}
	return "", errors.New("no cgroup v2 line in /proc/self/cgroup")
}

// makeCgroup creates a cgroup directory for one System beneath the test
// process's own cgroup, after removing those that Systems of test
// processes no longer alive left behind (a test binary killed before its
// clean-up ran).
func makeCgroup() (string, error) {
	parent, err := ownCgroup()
	if err != nil {
		return "", err
	}
	removeStaleCgroups(parent)
	dir := filepath.Join(parent, fmt.Sprintf("%s%d-%d", cgroupPrefix, os.Getpid(), cgroupSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	return dir, nil
}

func removeStaleCgroups(parent string) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), cgroupPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its test process still runs, maybe another test run
		}
		removeCgroup(filepath.Join(parent, e.Name()), time.Second)
	}
}

// removeCgroup removes dir and every cgroup beneath it, deepest first. The
// processes in them must have been killed: it retries while they finish
// exiting, until timeout.
func removeCgroup(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var dirs []string
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		// Deepest first: a path sorts after its parent.
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		var last error
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				last = fmt.Errorf("rmdir %s: %w", d, err)
			}
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			return fmt.Errorf("%w (processes left: %q)", last, strings.TrimSpace(string(procs)))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
