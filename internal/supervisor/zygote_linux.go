package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/proc"
	"github.com/seed589fcc9d/tableflip/systemd"
	"golang.org/x/sys/unix"
)

// # Starting a generation
//
// LISTEN_PID must be the program's own pid, which the program checks
// (sd_listen_fds(3)) and which is known only once the process exists.
// systemd sets it between fork and exec; Go cannot run code there. So a
// generation is started by a zygote: a copy of the supervisor's own
// executable (ZygoteCommand), started with the program's sockets already
// at fds 3, 4, … and the program's environment, that waits on a socket
// for the word to go; then it adds LISTEN_PID=<its pid> and execs the
// program in its own process. The zygote's pid becomes the generation's.
//
// The supervisor starts the next zygote once a new generation is ready
// (not while it starts: they would compete for the CPU), so that an
// upgrade costs one execve of the program, not a fork, an exec of the
// supervisor's executable and an exec of the program. Measured here, a
// fork and exec of tableflip up to its exit costs 2 to 4 ms, about what
// the library's whole upgrade-to-ready takes (bench, figure 6). A shim
// executed on demand was that rejected design; ptrace, to write
// LISTEN_PID into the child stopped at its exec, the other (it fails
// where ptrace is forbidden, and under a debugger). An upgrade that comes
// within a few milliseconds of the last waits for the next zygote's
// start.
//
// The exchange, on a SOCK_SEQPACKET pair: the supervisor sends one JSON
// zygoteRequest, with the executable's descriptor attached when it is to
// be executed by descriptor (a rollback to a release whose file was
// replaced). The zygote answers "x" just before execve, then, should
// execve fail, the error; execve closes its end (close-on-exec). So the
// supervisor reads "x" and end of file for a program that runs, "x" and
// an error for one that could not be executed, and end of file alone for
// a zygote that died.

// zygoteRequest is what the zygote is to execute.
type zygoteRequest struct {
	Path string   `json:"path"`
	Argv []string `json:"argv"`
	// ByFD: execute the descriptor that comes with the request, not
	// Path.
	ByFD bool `json:"by_fd,omitempty"`
}

// launcher starts zygotes and keeps the next one ready.
type launcher struct {
	argv0 string
	env   []string
	dir   string
	// files are the zygote's descriptors 0, 1, 2 and the sockets; its
	// end of the exchange comes after them.
	files []uintptr
	// next is the zygote started for the next generation, if any;
	// starting, set while one is being started, means that next will
	// receive it. Only the supervisor's loop uses them.
	next     chan *zygote
	starting bool
}

// zygote is one started zygote, not yet used.
type zygote struct {
	p    *proc.Process
	conn int // our end of the exchange, close-on-exec
	err  error
}

func newLauncher(argv0 string, env []string, dir string, socks []*socket) *launcher {
	files := []uintptr{0, 1, 2}
	for fd := range 3 {
		if !proc.Open(fd) {
			files[fd] = ^uintptr(0)
		}
	}
	for _, s := range socks {
		files = append(files, uintptr(s.FD))
	}
	return &launcher{argv0: argv0, env: env, dir: dir, files: files, next: make(chan *zygote, 1)}
}

// prestart starts the next zygote in the background, unless one is ready
// or on its way.
func (l *launcher) prestart() {
	if l.starting || len(l.next) > 0 {
		return
	}
	l.starting = true
	go func() { l.next <- l.start() }()
}

// take returns a zygote: the one ready or on its way, else a new one.
func (l *launcher) take() (*zygote, error) {
	var z *zygote
	if l.starting || len(l.next) > 0 {
		z = <-l.next
		l.starting = false
	} else {
		z = l.start()
	}
	if z.err != nil {
		return nil, z.err
	}
	select {
	case <-z.p.Done():
		// Killed while it waited (an OOM kill, a stray signal): one
		// more try.
		z.close()
		if z = l.start(); z.err != nil {
			return nil, z.err
		}
	default:
	}
	return z, nil
}

// start starts a zygote; its pid will be the generation's.
func (l *launcher) start() *zygote {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return &zygote{err: fmt.Errorf("zygote: %w", err)}
	}
	files := append(append([]uintptr(nil), l.files...), uintptr(fds[1]))
	argv := []string{l.argv0, ZygoteCommand, strconv.Itoa(len(files) - 1)}
	p, err := proc.Start("/proc/self/exe", argv, l.env, l.dir, files, false)
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return &zygote{err: fmt.Errorf("can't start the process of a new generation: %w", err)}
	}
	return &zygote{p: p, conn: fds[0]}
}

// discard stops the zygote that waits, if any, and waits until it is gone
// (at most a second): before the supervisor re-executes itself or exits.
func (l *launcher) discard() {
	if !l.starting && len(l.next) == 0 {
		return
	}
	z := <-l.next
	l.starting = false
	if z.err == nil {
		z.p.Signal(syscall.SIGKILL)
		select {
		case <-z.p.Done():
		case <-time.After(time.Second):
		}
		z.close()
	}
}

func (z *zygote) close() {
	if z.conn >= 0 {
		unix.Close(z.conn)
		z.conn = -1
	}
}

// exec tells the zygote to execute req (exe, if not negative, is the
// descriptor of a ByFD request) and returns at once; result is called, on
// another goroutine, with nil once the program runs, or why it does not.
// Either way the zygote's process is the generation's from now on, and
// its exit says how it ended.
func (z *zygote) exec(req zygoteRequest, exe int, result func(error)) {
	b, _ := json.Marshal(req)
	var oob []byte
	if exe >= 0 {
		oob = unix.UnixRights(exe)
	}
	if err := unix.Sendmsg(z.conn, b, oob, nil, 0); err != nil {
		z.close()
		go result(fmt.Errorf("zygote (pid %d): %w", z.p.PID(), err))
		return
	}
	go func() {
		defer z.close()
		var got []byte
		buf := make([]byte, 4096)
		for {
			n, err := unix.Read(z.conn, buf)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if n <= 0 {
				break
			}
			got = append(got, buf[:n]...)
		}
		switch {
		case len(got) == 0:
			result(fmt.Errorf("the zygote (pid %d) ended before it could execute %s", z.p.PID(), req.Path))
		case len(got) > 1:
			result(fmt.Errorf("exec %s: %s", req.Path, got[1:]))
		default:
			result(nil)
		}
	}()
}

// Zygote is the process that becomes a generation (ZygoteCommand): args
// are the rest of its command line, the number of its end of the
// exchange with the supervisor. It returns only if the program could not
// be executed, with the exit status to end with; 0 when the supervisor
// went away before it asked for anything.
func Zygote(args []string) int {
	fd := -1
	if len(args) == 1 {
		fd, _ = strconv.Atoi(args[0])
	}
	if fd < 3 || !proc.Open(fd) {
		fmt.Fprintln(os.Stderr, "tableflip: "+ZygoteCommand+" is started by tableflip run, not by hand")
		return 2
	}
	unix.CloseOnExec(fd)
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(4))
	var n, noob int
	var err error
	for {
		n, noob, _, _, err = unix.Recvmsg(fd, buf, oob, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil || n == 0 {
		return 0 // the supervisor is gone, or stops
	}
	fail := func(err error) int {
		unix.Write(fd, []byte(err.Error()))
		return 127
	}
	var req zygoteRequest
	if err := json.Unmarshal(buf[:n], &req); err != nil || len(req.Argv) == 0 {
		unix.Write(fd, []byte("x"))
		return fail(fmt.Errorf("malformed request from the supervisor: %v", err))
	}
	path := req.Path
	if req.ByFD {
		exe := -1
		if msgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				exe = fds[0]
			}
		}
		if exe < 0 {
			unix.Write(fd, []byte("x"))
			return fail(errors.New("no executable's descriptor came with the request"))
		}
		path = "/proc/self/fd/" + strconv.Itoa(exe)
		if isScript(path) {
			// The kernel hands the interpreter this path, which it
			// opens after execve: the descriptor must survive it.
			unix.FcntlInt(uintptr(exe), unix.F_SETFD, 0)
		} else {
			unix.CloseOnExec(exe)
		}
	}
	env := os.Environ()
	if os.Getenv(systemd.EnvListenFds) != "" {
		env = append(env, systemd.EnvListenPID+"="+strconv.Itoa(os.Getpid()))
	}
	unix.Write(fd, []byte("x"))
	return fail(unix.Exec(path, req.Argv, env))
}

// isScript reports whether the file at path starts with "#!".
func isScript(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [2]byte
	n, _ := f.Read(b[:])
	return n == 2 && string(b[:]) == "#!"
}
