//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/proctree"
	"golang.org/x/sys/unix"
)

// procEvents hears of every fork, exec and exit on the host from the
// kernel's process events connector (NETLINK_CONNECTOR, CN_IDX_PROC),
// which needs CAP_NET_ADMIN. It is how the check sees a new generation
// end however briefly it lived: its parent, the old generation, reaps it,
// so the check, even as a subreaper, gets no SIGCHLD for it, and looking
// at /proc misses a process that lives a few milliseconds.
type procEvents struct {
	f    *os.File
	done chan struct{}

	mu      sync.Mutex
	watched map[int]*childEvents // by the parent's pid
	lost    bool                 // the kernel dropped events (ENOBUFS)
}

// childEvents follows the children of one process that run its program
// again: forked, then exec'd with the same command line.
type childEvents struct {
	cmd     string
	forked  map[int]bool
	execd   map[int]bool
	ended   []proctree.Exit
	pids    []int         // of ended
	changed chan struct{} // closed and replaced when ended grows
}

// The connector's constants, from linux/connector.h and linux/cn_proc.h.
const (
	cnIdxProc         = 1
	cnValProc         = 1
	procCnMcastListen = 1
	procEventFork     = 0x00000001
	procEventExec     = 0x00000002
	procEventExit     = 0x80000000

	// A message is a struct nlmsghdr (16 bytes), a struct cn_msg (20),
	// then a struct proc_event: what, cpu, timestamp_ns, and from byte
	// 16 the event's pids (and an exit's wait status).
	cnMsgData   = 16 + 20
	procEventAt = 16
)

// openProcEvents subscribes to process events, or says why it cannot.
func openProcEvents() (*procEvents, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_CONNECTOR)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// Netlink speaks the host's byte order.
	ne := binary.NativeEndian
	msg := make([]byte, cnMsgData+4)
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.NLMSG_DONE)
	ne.PutUint32(msg[16:], cnIdxProc)
	ne.PutUint32(msg[20:], cnValProc)
	ne.PutUint16(msg[32:], 4)
	ne.PutUint32(msg[cnMsgData:], procCnMcastListen)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	e := &procEvents{f: os.NewFile(uintptr(fd), "process events"), done: make(chan struct{}), watched: map[int]*childEvents{}}
	go e.loop()
	return e, nil
}

func (e *procEvents) loop() {
	defer close(e.done)
	rc, err := e.f.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 1<<16)
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		}); err != nil {
			return // closed
		}
		if errors.Is(rerr, unix.ENOBUFS) {
			e.mu.Lock()
			e.lost = true
			e.mu.Unlock()
			continue
		}
		if rerr != nil {
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if d := m.Data; len(d) >= cnMsgData-16+procEventAt+16 {
				e.event(d[cnMsgData-16:])
			}
		}
	}
}

// event takes one struct proc_event.
func (e *procEvents) event(ev []byte) {
	ne := binary.NativeEndian
	what := ne.Uint32(ev)
	pid := func(i int) int { return int(int32(ne.Uint32(ev[procEventAt+4*i:]))) }
	e.mu.Lock()
	defer e.mu.Unlock()
	switch what {
	case procEventFork:
		// parent_pid, parent_tgid, child_pid, child_tgid: a process,
		// not a thread, when child_pid is child_tgid.
		if c := e.watched[pid(1)]; c != nil && pid(2) == pid(3) {
			c.forked[pid(3)] = true
		}
	case procEventExec:
		// process_pid, process_tgid
		for _, c := range e.watched {
			if c.forked[pid(1)] && c.runs(pid(1)) {
				c.execd[pid(1)] = true
			}
		}
	case procEventExit:
		// process_pid, process_tgid, exit_code (a wait status), …
		if pid(0) != pid(1) {
			return // a thread
		}
		for _, c := range e.watched {
			if c.execd[pid(1)] {
				c.pids = append(c.pids, pid(1))
				c.ended = append(c.ended, proctree.Exit{At: time.Now(), Status: syscall.WaitStatus(ne.Uint32(ev[procEventAt+8:]))})
				close(c.changed)
				c.changed = make(chan struct{})
			}
		}
	}
}

// runs reports whether pid, which has just exec'd, runs the parent's
// command line: the Upgrader starts the same program again, while a
// server may run other programs. One gone already is given the benefit of
// the doubt.
func (c *childEvents) runs(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		return true
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")) == c.cmd
}

// watch begins to follow the new generations that parent starts from now
// on.
func (e *procEvents) watch(parent int) {
	c := &childEvents{forked: map[int]bool{}, execd: map[int]bool{}, changed: make(chan struct{})}
	if st, ok := proctree.ReadStat(parent); ok {
		c.cmd = st.Cmd
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.watched[parent] = c
}

func (e *procEvents) unwatch(parent int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.watched, parent)
}

// ended returns a new generation of parent that has ended since watch,
// and a channel that is closed when another one ends. reliable is false
// once the kernel has dropped events.
func (e *procEvents) ended(parent int) (pid int, how proctree.Exit, ok bool, changed <-chan struct{}, reliable bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.watched[parent]
	if c == nil {
		return 0, proctree.Exit{}, false, nil, !e.lost
	}
	if len(c.ended) > 0 {
		return c.pids[0], c.ended[0], true, c.changed, !e.lost
	}
	return 0, proctree.Exit{}, false, c.changed, !e.lost
}

func (e *procEvents) close() {
	e.f.Close()
	<-e.done
}
