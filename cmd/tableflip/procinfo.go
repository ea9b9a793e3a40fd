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

// fdCount returns the number of open fds of pid.
func fdCount(pid int) (n int, ok bool) {
	if !haveProc() {
		return 0, false
	}
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0, false
	}
	return len(ents), true
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
}

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
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return procStat{}, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, false
	}
	st := procStat{PID: pid, PPID: ppid, State: fields[0]}
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
