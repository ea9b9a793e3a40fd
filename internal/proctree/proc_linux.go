//go:build linux

package proctree

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Supported reports whether this platform has the /proc this package reads.
const Supported = true

// BecomeSubreaper makes this process a child subreaper: descendants whose
// parent exits are re-parented to it.
func BecomeSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// Stat is what /proc/PID/stat and cmdline say about a process.
type Stat struct {
	PID   int    `json:"pid"`
	PPID  int    `json:"ppid"`
	PGID  int    `json:"-"`     // process group
	State string `json:"state"` // R, S, Z, …
	Cmd   string `json:"cmd"`
	// ForkNoExec is set on a process that has forked and not exec'd
	// (PF_FORKNOEXEC).
	ForkNoExec bool `json:"-"`
}

// pfForkNoExec is the kernel's PF_FORKNOEXEC, in the flags field of
// /proc/PID/stat: set at fork, cleared by exec.
const pfForkNoExec = 0x40

// ReadStat reads pid's entry in /proc.
func ReadStat(pid int) (Stat, bool) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Stat{}, false
	}
	// pid (comm) state ppid …; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, false
	}
	// state ppid pgrp session tty_nr tpgid flags …
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 7 {
		return Stat{}, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return Stat{}, false
	}
	pgid, err := strconv.Atoi(fields[2])
	if err != nil {
		return Stat{}, false
	}
	flags, err := strconv.ParseUint(fields[6], 10, 64)
	if err != nil {
		return Stat{}, false
	}
	st := Stat{PID: pid, PPID: ppid, PGID: pgid, State: fields[0], ForkNoExec: flags&pfForkNoExec != 0}
	if j := bytes.IndexByte(b, '('); j >= 0 && j < i {
		st.Cmd = string(b[j+1 : i])
	}
	if cl, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil && len(cl) > 0 {
		st.Cmd = strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))
	}
	return st, true
}

// Descendants returns every process below root, zombies included, parents
// before their children.
func Descendants(root int) []Stat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]Stat{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := ReadStat(pid); ok {
			children[st.PPID] = append(children[st.PPID], st)
		}
	}
	var out []Stat
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c.PID)
		}
	}
	return out
}

// Children returns the pids of pid's children.
func Children(pid int) []int {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		// Each thread lists the children it forked.
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "children"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// RSSKiB returns the resident set size of pid in KiB.
func RSSKiB(pid int) (int, bool) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, found := strings.CutPrefix(sc.Text(), "VmRSS:"); found {
			fields := strings.Fields(v)
			if len(fields) == 0 {
				return 0, false
			}
			n, err := strconv.Atoi(fields[0])
			return n, err == nil
		}
	}
	return 0, false
}
