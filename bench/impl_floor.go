//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The floor is the least an upgrade can do: the process starts itself
// again with its listening sockets as descriptors 3, 4, … in the order it
// listened, and a pipe after them on which the new process writes one byte
// once it is ready. No names, no versions, no checks of who the parent
// is; the only state in the environment is how many sockets there are.
const envFloorFDs = "BENCH_FLOOR_FDS"

// floorUpgrader is the old generation's side of the floor.
type floorUpgrader struct {
	mu        sync.Mutex
	listeners []*net.TCPListener
	upgraded  chan struct{}
}

// serveFloor is the sample server on the floor: inherit or listen, serve,
// write the ready byte, and on a successful upgrade http.Server.Shutdown,
// as the tableflip README does.
func serveFloor(cfg *serverConfig) error {
	inherited, ready, err := floorInherit()
	if err != nil {
		return err
	}
	f := &floorUpgrader{upgraded: make(chan struct{})}
	srv := &http.Server{Handler: handler()}
	for i, addr := range cfg.addrs {
		var ln net.Listener
		if i < len(inherited) {
			ln = inherited[i]
		} else {
			ln, err = net.Listen("tcp", addr)
			if err != nil {
				return err
			}
		}
		f.listeners = append(f.listeners, ln.(*net.TCPListener))
		if i == 0 {
			go srv.Serve(ln)
		}
	}
	for _, ln := range inherited[min(len(inherited), len(cfg.addrs)):] {
		ln.Close()
	}
	if ready != nil {
		_, err := ready.Write([]byte{1})
		ready.Close()
		if err != nil {
			return fmt.Errorf("floor: telling the parent: %w", err)
		}
	}
	stop := make(chan struct{})
	var stopOnce sync.Once
	ctl, err := dialControl(cfg, nil, f.upgrade, func() { stopOnce.Do(func() { close(stop) }) })
	if err != nil {
		return err
	}
	defer ctl.close()
	select {
	case <-f.upgraded:
	case <-stop:
	}

	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	err = srv.Shutdown(ctx)
	for _, ln := range f.listeners {
		ln.Close()
	}
	return err
}

// floorInherit takes the sockets and the ready pipe from the parent, if
// there is one.
func floorInherit() ([]net.Listener, *os.File, error) {
	v, ok := os.LookupEnv(envFloorFDs)
	if !ok {
		return nil, nil, nil
	}
	os.Unsetenv(envFloorFDs)
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return nil, nil, fmt.Errorf("floor: bad %s=%q", envFloorFDs, v)
	}
	lns := make([]net.Listener, n)
	for i := range n {
		f := os.NewFile(uintptr(3+i), "listener")
		lns[i], err = net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("floor: fd %d: %w", 3+i, err)
		}
	}
	unix.CloseOnExec(3 + n)
	return lns, os.NewFile(uintptr(3+n), "ready"), nil
}

// upgrade starts the next generation and waits for its ready byte.
func (f *floorUpgrader) upgrade() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.upgraded:
		return errors.New("floor: already upgraded")
	default:
	}

	// Duplicates, close-on-exec here, become the child's 3, 4, … (the
	// kernel's dup2 in the child clears the flag). Fd() or File() through
	// os/exec would put the shared sockets into blocking mode.
	dups := make([]int, 0, len(f.listeners))
	defer func() {
		for _, fd := range dups {
			unix.Close(fd)
		}
	}()
	for _, ln := range f.listeners {
		rc, err := ln.SyscallConn()
		if err != nil {
			return err
		}
		var dupErr error
		err = rc.Control(func(fd uintptr) {
			var d int
			d, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
			if dupErr == nil {
				dups = append(dups, d)
			}
		})
		if err == nil {
			err = dupErr
		}
		if err != nil {
			return err
		}
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return err
	}
	// Non-blocking, so that the read below can have a deadline.
	r := os.NewFile(uintptr(p[0]), "ready")
	defer r.Close()

	files := []uintptr{0, 1, 2}
	for _, fd := range dups {
		files = append(files, uintptr(fd))
	}
	files = append(files, uintptr(p[1]))
	exe, err := os.Executable()
	if err != nil {
		unix.Close(p[1])
		return err
	}
	env := append(os.Environ(), envFloorFDs+"="+strconv.Itoa(len(dups)))
	_, err = syscall.ForkExec(exe, os.Args, &syscall.ProcAttr{Env: env, Files: files})
	unix.Close(p[1])
	if err != nil {
		return err
	}

	// The child's end of file, if it dies first, ends the read.
	r.SetReadDeadline(time.Now().Add(upgradeTimeout))
	var b [1]byte
	if _, err := r.Read(b[:]); err != nil {
		return fmt.Errorf("floor: new generation not ready: %w", err)
	}
	close(f.upgraded)
	return nil
}
