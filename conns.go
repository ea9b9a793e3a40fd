package tableflip

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/peercred"
)

// # Counting connections
//
// Stats lists each live generation's open connections. What is counted:
// the connections accepted on the listeners that the Upgrader handed out
// (Listen, ListenWithCallback, Listener; the control socket's among them)
// and not closed yet. Connections the program makes itself, or accepts on
// listeners of its own, are not.
//
// A generation counts its own: each listener remembers what it accepted,
// and a count asks each of those connections whether it is closed, which
// costs no system call. That is O(the generation's own connections),
// whatever else the host holds. The serving generation asks each older
// generation that still drains for its count, over a Unix socket in the
// abstract namespace that the draining generation listens on
// ("@tableflip-conns-<pid>", Linux only: elsewhere a draining
// generation's count is -1). The asker checks that the socket is that
// generation's (SO_PEERCRED), and the draining generation answers only
// its own uid and root. An answer that takes longer than connCountWait
// counts as -1.

// connCountWait bounds how long Stats waits for the draining generations'
// counts, all of them together. A variable so that a test can hold a
// status request as long as it needs.
var connCountWait = 250 * time.Millisecond

// connSet remembers the connections a generation's listeners accepted.
type connSet struct {
	mu    sync.Mutex
	conns []syscall.RawConn
	// live is how many were open at the last prune.
	live int
}

// add remembers c. Closed connections are forgotten when the set has
// doubled since the last prune, so that a program that never asks for a
// count does not keep every connection it ever accepted.
func (s *connSet) add(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = append(s.conns, rc)
	if len(s.conns) > 2*s.live+64 {
		s.prune()
	}
}

// count returns how many of the connections are still open.
func (s *connSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune()
	return s.live
}

// prune forgets the closed connections: Control fails at once, with no
// system call, on a connection that its owner has closed.
func (s *connSet) prune() {
	open := s.conns[:0]
	for _, rc := range s.conns {
		if rc.Control(func(uintptr) {}) == nil {
			open = append(open, rc)
		}
	}
	clear(s.conns[len(open):])
	s.conns = open
	s.live = len(open)
}

// connCountAddr is the abstract socket on which the draining generation
// pid answers with its count of open connections.
func connCountAddr(pid int) string {
	return "@tableflip-conns-" + strconv.Itoa(pid)
}

// canCountOthers: only Linux has abstract Unix sockets.
const canCountOthers = runtime.GOOS == "linux"

// serveConnCount answers the newer generations' requests for this
// generation's count, for the life of the process, from when this
// generation has handed over: it listens before it returns, and serves on
// a goroutine of its own.
func (u *Upgrader) serveConnCount() {
	if !canCountOthers {
		return
	}
	ln, err := net.Listen("unix", connCountAddr(os.Getpid()))
	if err != nil {
		u.log.Warn("tableflip: can't tell newer generations how many connections this one holds", "error", err)
		return
	}
	go u.answerConnCount(ln)
}

func (u *Upgrader) answerConnCount(ln net.Listener) {
	euid := os.Geteuid()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			defer c.Close()
			if cred, err := peercred.Get(c); err != nil || (cred.UID != euid && cred.UID != 0) {
				return
			}
			c.SetWriteDeadline(time.Now().Add(connCountWait))
			c.Write([]byte(strconv.Itoa(u.Fds.conns.count()) + "\n"))
		}()
	}
}

// countOlder asks each of the older generations for its count, at most
// connCountWait in all, and sets their Conns: -1 where no answer came.
func countOlder(older []GenerationInfo) {
	ctx, cancel := context.WithTimeout(context.Background(), connCountWait)
	defer cancel()
	var wg sync.WaitGroup
	for i := range older {
		older[i].Conns = -1
		if !canCountOthers {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			older[i].Conns = askConnCount(ctx, older[i].PID)
		}()
	}
	wg.Wait()
}

// askConnCount asks the generation pid for its count, or returns -1.
func askConnCount(ctx context.Context, pid int) int {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", connCountAddr(pid))
	if err != nil {
		return -1
	}
	defer c.Close()
	// The name is open to anyone in the network namespace: the answer
	// counts only if the generation itself gives it.
	if cred, err := peercred.Get(c); err != nil || cred.PID != pid {
		return -1
	}
	if deadline, ok := ctx.Deadline(); ok {
		c.SetDeadline(deadline)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || n < 0 {
		return -1
	}
	return n
}
