package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// What the check reads about processes comes from /proc, so only Linux
// has it; elsewhere every function here reports ok == false and the report
// says "n/a".
func haveProc() bool { return runtime.GOOS == "linux" }

// fdCount returns the number of open fds of pid, and how many of them
// are connections: TCP sockets other than listeners, and connected UDP
// sockets, which come and go with the clients and peers of a server.
// A socket that the kernel no longer lists once the fds have been read
// was closed meanwhile, and is not counted at all: under a load of new
// connections, many are.
func fdCount(pid int) (fds, conns int, ok bool) {
	if !haveProc() {
		return 0, 0, false
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, false
	}
	var sockets []string
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		fds++
		if inode, ok := strings.CutPrefix(l, "socket:["); ok {
			sockets = append(sockets, strings.TrimSuffix(inode, "]"))
		}
	}
	if len(sockets) == 0 {
		return fds, 0, true
	}
	table := socketTable()
	for _, inode := range sockets {
		switch kind, listed := table[inode]; {
		case !listed:
			fds--
		case kind == connection:
			conns++
		}
	}
	return fds, conns, true
}

type socketKind int

const (
	other      socketKind = iota // listener, unconnected datagram socket, Unix socket, …
	connection                   // TCP but a listener; connected UDP
)

// socketTable returns the kind of every socket the kernel lists, by
// inode.
func socketTable() map[string]socketKind {
	out := map[string]socketKind{}
	for _, t := range []struct {
		file  string
		inode int // field
		kind  func(state string) socketKind
	}{
		{"tcp", 9, tcpKind}, {"tcp6", 9, tcpKind},
		{"udp", 9, udpKind}, {"udp6", 9, udpKind},
		{"udplite", 9, udpKind}, {"udplite6", 9, udpKind},
		{"raw", 9, nil}, {"raw6", 9, nil},
		{"unix", 6, nil}, {"netlink", 9, nil}, {"packet", 8, nil},
	} {
		b, err := os.ReadFile(filepath.Join("/proc/net", t.file))
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for _, line := range lines[min(1, len(lines)):] { // a header first
			f := strings.Fields(line)
			if len(f) <= t.inode {
				continue
			}
			kind := other
			if t.kind != nil {
				// sl local rem st …: the state is the fourth field.
				kind = t.kind(f[3])
			}
			out[f[t.inode]] = kind
		}
	}
	return out
}

func tcpKind(state string) socketKind {
	if state == "0A" { // LISTEN
		return other
	}
	return connection
}

func udpKind(state string) socketKind {
	if state == "01" { // ESTABLISHED: connected
		return connection
	}
	return other
}

// children returns the pids of pid's children.
func children(pid int) []int {
	if !haveProc() {
		return nil
	}
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

// newGenWatch looks for the new generation that an old one starts when
// told to upgrade: a child that was not there before the signal, running
// the old one's command line (the Upgrader starts the same program
// again). Its parent reaps it, not the check, even as a subreaper, which
// hears only of orphans; so its end is seen by looking.
type newGenWatch struct {
	parent int
	cmd    string
	before map[int]bool
	seen   map[int]bool
}

func watchNewGeneration(parent int) *newGenWatch {
	w := &newGenWatch{parent: parent, before: map[int]bool{}, seen: map[int]bool{}}
	if st, ok := readProcStat(parent); ok {
		w.cmd = st.Cmd
	}
	for _, p := range children(parent) {
		w.before[p] = true
	}
	return w
}

// ended returns a new generation that was seen running and is gone.
func (w *newGenWatch) ended(alive func(pid int) bool) (pid int, ok bool) {
	if w.cmd == "" {
		return 0, false
	}
	for _, p := range children(w.parent) {
		if w.before[p] || w.seen[p] {
			continue
		}
		// A child that has not exec'd yet, or never will (the race
		// detector's runtime clones helpers), shows the parent's
		// command line too.
		if st, ok := readProcStat(p); ok && st.Cmd == w.cmd && !st.forkNoExec {
			w.seen[p] = true
		}
	}
	for p := range w.seen {
		if !alive(p) {
			return p, true
		}
	}
	return 0, false
}

// rssKiB returns the resident set size of pid in KiB.
func rssKiB(pid int) (kib int, ok bool) {
	if !haveProc() {
		return 0, false
	}
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

// procStat is what /proc/PID/stat and cmdline say about a process.
type procStat struct {
	PID   int    `json:"pid"`
	PPID  int    `json:"ppid"`
	State string `json:"state"` // R, S, Z, …
	Cmd   string `json:"cmd"`

	forkNoExec bool // forked and not exec'd (PF_FORKNOEXEC)
}

// pfForkNoExec is the kernel's PF_FORKNOEXEC flag, in the flags field of
// /proc/PID/stat: set at fork, cleared by exec.
const pfForkNoExec = 0x40

func readProcStat(pid int) (procStat, bool) {
	if !haveProc() {
		return procStat{}, false
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return procStat{}, false
	}
	// pid (comm) state ppid …; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	// state ppid pgrp session tty_nr tpgid flags …
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 7 {
		return procStat{}, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, false
	}
	flags, err := strconv.ParseUint(fields[6], 10, 64)
	if err != nil {
		return procStat{}, false
	}
	st := procStat{PID: pid, PPID: ppid, State: fields[0], forkNoExec: flags&pfForkNoExec != 0}
	if j := bytes.IndexByte(b, '('); j >= 0 && j < i {
		st.Cmd = string(b[j+1 : i])
	}
	if cl, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil && len(cl) > 0 {
		st.Cmd = strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))
	}
	return st, true
}

// descendants returns every process below root, found by walking /proc.
func descendants(root int) []procStat {
	if !haveProc() {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]procStat{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readProcStat(pid); ok {
			children[st.PPID] = append(children[st.PPID], st)
		}
	}
	var out []procStat
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
