// Package systemd speaks systemd's two process protocols, written on
// golang.org/x/sys/unix because go-systemd cannot pass fds:
//
//   - sd_notify(3): a [Notifier] tells systemd that the service is ready
//     (READY=1), reloading (RELOADING=1 with MONOTONIC_USEC=), handed over
//     to a new main process (MAINPID=), stopping (STOPPING=1), what it is
//     doing (STATUS=), and hands it fds to keep in the unit's fd store
//     (FDSTORE=1 with FDNAME=, sent with SCM_RIGHTS).
//   - socket activation, sd_listen_fds(3): [ListenFds] takes the sockets
//     systemd passed (and the fds it gives back from the fd store), with
//     their names, types and real addresses, so that a program can use
//     them where it would have called net.Listen ([ListenFd.Matches]).
//
// Both cost nothing when the process does not run under systemd:
// [NewNotifier] returns [ErrNoSocket] and [ListenFds] returns nothing after
// looking at the environment. Outside the "unix" build constraint the
// package builds, and returns [ErrNotSupported] where it would need a
// Unix socket.
//
// # Upgrades and NotifyAccess=
//
// A graceful upgrade replaces the unit's main process. The package is
// built for the scheme that needs the narrowest access, NotifyAccess=main:
// the old generation, which is the main process systemd knows, sends
// RELOADING=1 when the upgrade starts, and, once the new generation is
// ready, MAINPID=<new pid> and READY=1 in one message
// ([Notifier.MainPIDReady]); after a failed upgrade it sends READY=1 with
// a STATUS= naming the failure. From then on the new generation is the
// main process and notifies in its turn. This is why NOTIFY_SOCKET is
// never removed from the environment (see [Notifier]).
//
// # Example
//
// A server that takes its socket from systemd when it is socket-activated,
// listens itself otherwise, and tells systemd when it is ready:
//
//	package main
//
//	import (
//		"errors"
//		"log"
//		"net"
//		"net/http"
//
//		"github.com/seed589fcc9d/tableflip/systemd"
//	)
//
//	func main() {
//		fds, err := systemd.ListenFds()
//		if err != nil {
//			log.Printf("socket activation: %v", err) // serve on what is usable
//		}
//		var ln net.Listener
//		for _, fd := range fds {
//			if ln == nil && fd.Matches("tcp", "127.0.0.1:8080") {
//				ln, err = net.FileListener(fd.File)
//			}
//			if fd.File != nil {
//				fd.File.Close() // FileListener made its own copy
//			}
//		}
//		if ln == nil {
//			ln, err = net.Listen("tcp", "127.0.0.1:8080")
//		}
//		if err != nil {
//			log.Fatal(err)
//		}
//		n, err := systemd.NewNotifier()
//		if err == nil {
//			err = n.Ready("serving on " + ln.Addr().String())
//		}
//		if err != nil && !errors.Is(err, systemd.ErrNoSocket) {
//			log.Printf("sd_notify: %v", err) // a warning: keep serving
//		}
//		log.Fatal(http.Serve(ln, http.NotFoundHandler()))
//	}
//
// with a unit such as
//
//	[Service]
//	Type=notify
//	NotifyAccess=main
//	ExecStart=/usr/local/bin/server
//
// and, for socket activation, a server.socket unit with
// ListenStream=127.0.0.1:8080 and FileDescriptorName=web. More units, for
// Type=notify-reload and PIDFile=, are in the repository's
// examples/systemd folder.
package systemd
