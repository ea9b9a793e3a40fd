package systemd_test

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"github.com/seed589fcc9d/tableflip/systemd"
)

func ExampleNewNotifier() {
	n, err := systemd.NewNotifier()
	if errors.Is(err, systemd.ErrNoSocket) {
		return // not under systemd: nothing to tell
	}
	if err == nil {
		err = n.Ready("serving")
	}
	if err != nil {
		log.Printf("warning: %v", err) // keep serving
	}
}

// An upgrade as the old generation reports it, under Type=notify-reload.
func ExampleNotifier_MainPIDReady() {
	n, err := systemd.NewNotifier()
	if err != nil {
		return
	}
	n.Reloading("upgrading")
	n.ExtendTimeout(time.Minute) // while the new generation initialises
	newPID := 12345              // the new generation, once it is ready
	if err := n.MainPIDReady(newPID, "upgraded"); err != nil {
		log.Printf("warning: %v", err)
	}
}

func ExampleNotifier_StoreFiles() {
	n, err := systemd.NewNotifier()
	if err != nil {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close() // systemd keeps its own copy
	// After a restart or a crash, ListenFds returns it named "web".
	if err := n.StoreFiles("web", f); err != nil {
		log.Printf("warning: %v", err)
	}
}

func ExampleListenFds() {
	fds, err := systemd.ListenFds()
	if err != nil {
		log.Printf("warning: %v", err) // some fds were unusable; the rest are fine
	}
	for _, fd := range fds {
		if fd.Err != nil {
			continue
		}
		fmt.Println(fd.Fd, fd.Name, fd.Network, fd.Addr, fd.Listening)
	}
}

func ExampleParseListenEnv() {
	env := map[string]string{
		"LISTEN_PID":     "4242",
		"LISTEN_FDS":     "2",
		"LISTEN_FDNAMES": "web:dns",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	names, err := systemd.ParseListenEnv(lookup, 4242)
	fmt.Println(names, err)

	env["LISTEN_FDNAMES"] = "web"
	_, err = systemd.ParseListenEnv(lookup, 4242)
	fmt.Println(err)

	names, err = systemd.ParseListenEnv(lookup, os.Getpid()+1)
	fmt.Println(names == nil, err)
	// Output:
	// [web dns] <nil>
	// systemd: LISTEN_FDNAMES="web": 1 names for 2 fds (LISTEN_FDS)
	// true <nil>
}

func ExampleStatus() {
	fmt.Println(systemd.Status("upgrade failed: child exited"))
	fmt.Println(systemd.MainPID(4242))
	fmt.Println(systemd.ExtendTimeout(90 * time.Second))
	fmt.Println(systemd.MonotonicUsec(1500 * time.Millisecond))
	fmt.Println(systemd.FdName("web"))
	// Output:
	// STATUS=upgrade failed: child exited
	// MAINPID=4242
	// EXTEND_TIMEOUT_USEC=90000000
	// MONOTONIC_USEC=1500000
	// FDNAME=web
}
