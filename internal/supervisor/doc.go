// Package supervisor is tableflip run: a supervisor whose pid never
// changes, which gives any program zero-downtime upgrades through
// systemd's own protocols. cmd/tableflip parses the command line into
// Options and calls Run; the command's documentation says what each flag
// does. Linux only (pidfds, SO_PASSCRED, sock_diag, execve in place);
// elsewhere this package has only its Options.
//
// # Design
//
// The supervisor is one process for ever, and the program's generations
// are its children. It is built on the library's pieces, not on an
// Upgrader: an Upgrader is a chain of processes, each replacing the last
// (its Upgrade starts a new process that takes the main PID), while the
// supervisor stays and replaces its children. What it takes from the
// library:
//
//   - package systemd: socket activation (systemd.ListenFds and
//     ListenFd.Matches, for the sockets systemd passes it) and sd_notify
//     (systemd.Notifier, for what it tells systemd);
//   - internal/proc: starting a generation, watching it through a pidfd,
//     its exit status, and proc.Adopt after a re-execution;
//   - the control protocol: tableflip.ServeControl and ListenControl
//     serve it, the supervisor is a tableflip.ControlHandler, and its
//     answers use the library's error taxonomy (tableflip.ChildError,
//     ErrTimeout, ErrChildExited, ErrUpgradeInProgress, ErrNotReady,
//     ErrStopped) and Stats, so that tableflip upgrade, tableflip status
//     and tableflip check work with it unchanged;
//   - internal/pidfile and internal/dup.
//
// One goroutine (supervisor.run) owns the state; signals, the notify
// socket, the control socket, process watchers, timers and probes post
// events to it. One upgrade reads top to bottom from upgradeAsked in
// supervisor_linux.go.
//
// # The program's side
//
// The sockets (-listen, and those systemd passed) are opened once and
// held by the supervisor. A generation gets them as systemd would pass
// them: fds 3, 4, … with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (its
// own pid: see zygote_linux.go for how, without an exec on the
// upgrade's path), and NOTIFY_SOCKET naming the supervisor's own
// abstract datagram socket (notify_linux.go). The old generation keeps
// accepting from the same queues until it acts on the stop signal, so no
// connection is refused or lost in between, and one that a new
// generation took before it died is not lost either if the program, as
// the library's listeners do, accepts only once ready.
//
// A generation is ready when it sends READY=1 from its own pid (as with
// NotifyAccess=main), or, with -ready, when a probe that it accepted
// itself succeeds (ready_linux.go: the old generation shares the socket
// and would otherwise answer for it), or when it still runs after a
// delay.
//
// # Messages
//
// From a starting generation, STATUS= and EXTEND_TIMEOUT_USEC= are
// relayed to systemd and READY=1 makes it ready; from the serving one,
// STATUS=, and RELOADING=1 and READY=1 of a reload of its own; nothing
// from a draining one. MAINPID= (the main PID is the supervisor's),
// STOPPING=1 (a draining library program sends it), FDSTORE=1 (its fds
// are closed), WATCHDOG=1 and the rest are not relayed.
//
// # Not done
//
// The supervisor does not push its sockets to systemd's fd store: a
// restart closes them (use a socket unit for restarts that refuse
// nothing). It does not count a program's connections (Stats' Conns is
// -1), nor relay WATCHDOG=1.
package supervisor
