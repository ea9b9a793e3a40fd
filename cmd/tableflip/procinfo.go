package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// What the check reads about processes comes from /proc (see
// internal/proctree), so only Linux has it; elsewhere every function here
// reports ok == false and the report says "n/a".

// fdCount returns the number of open fds of pid, and how many of them
// are connections: TCP sockets other than listeners, and connected UDP
// sockets, which come and go with the clients and peers of a server.
// A socket that the kernel no longer lists once the fds have been read
// was closed meanwhile, and is not counted at all: under a load of new
// connections, many are.
func fdCount(pid int) (fds, conns int, ok bool) {
	if !proctree.Supported {
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
	if st, ok := proctree.ReadStat(parent); ok {
		w.cmd = st.Cmd
	}
	for _, p := range proctree.Children(parent) {
		w.before[p] = true
	}
	return w
}

// ended returns a new generation that was seen running and is gone.
func (w *newGenWatch) ended(alive func(pid int) bool) (pid int, ok bool) {
	if w.cmd == "" {
		return 0, false
	}
	for _, p := range proctree.Children(w.parent) {
		if w.before[p] || w.seen[p] {
			continue
		}
		// A child that has not exec'd yet, or never will (the race
		// detector's runtime clones helpers), shows the parent's
		// command line too.
		if st, ok := proctree.ReadStat(p); ok && st.Cmd == w.cmd && !st.ForkNoExec {
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
