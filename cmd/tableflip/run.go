// # tableflip run
//
//	tableflip run [flags] -- program [args…]
//
// run is a supervisor with a pid that never changes, which gives any
// program, in any language, zero-downtime upgrades through systemd's own
// protocols: the program takes its listening sockets as systemd passes
// them (socket activation: fds 3, 4, … with LISTEN_FDS, LISTEN_FDNAMES
// and LISTEN_PID, its own pid) and says that it is ready as it does to
// systemd (READY=1 to NOTIFY_SOCKET), or run probes it. A program that
// works under systemd's socket activation works under run unchanged; Go
// programs built on this library take their sockets with
// tableflip.Options.Systemd.
//
// The supervisor holds the sockets for as long as it runs. An upgrade
// (SIGHUP to the supervisor, tableflip upgrade -socket on its control
// socket, or systemd's reload) starts a new generation of the program
// with the same sockets; once the new one is ready, the old one gets
// -stop-signal and drains while the new one accepts from the same queues.
// A new generation that exits, or is not ready within -upgrade-timeout,
// is stopped and reaped, the old one serves on, and the control socket's
// answer says why. SIGTERM or SIGINT stops the supervisor: every
// generation gets -stop-signal, and the supervisor exits once all have
// exited (-drain-timeout bounds each, then SIGKILL).
//
// Flags:
//
//	-listen [name=]tcp://host:port | udp://host:port | unix://path
//	      a socket for the program (repeatable; tcp4, tcp6, udp4, udp6
//	      too); the program gets them as fds 3, 4, … in this order, then
//	      the sockets systemd passed to the supervisor that no -listen
//	      matches, named as systemd named them. A -listen that matches a
//	      socket systemd passed (same network and address) uses it. name
//	      (FileDescriptorName= rules; default "unknown") is the socket's
//	      in LISTEN_FDNAMES. Port 0 picks a free port.
//	-ready notify | tcp | tcp://host:port | http://host:port/path | delay=D
//	      how a new generation shows that it is ready (default notify):
//	      READY=1 to NOTIFY_SOCKET; accepting a connection on the first
//	      TCP socket, or on host:port; accepting one to the URL and
//	      answering its GET with a status below 400; or still running D
//	      after it was executed. A probe counts only when the new
//	      generation itself (or a process it started) accepted it, not
//	      the old one that shares the socket.
//	-upgrade-timeout D
//	      how long a new generation may take to be ready (default 1m);
//	      then it gets -stop-signal, SIGKILL after min(5s, D), and the
//	      upgrade fails
//	-stop-signal SIG
//	      the signal that tells a generation to drain and exit (default
//	      TERM)
//	-drain-timeout D
//	      how long a generation may drain before SIGKILL (default 30s; 0:
//	      no bound)
//	-control PATH
//	      a control socket at PATH (mode 0600) that answers tableflip
//	      upgrade and tableflip status as a library server's does; status
//	      names the supervisor as the pid, and lists the program's
//	      generations with their pids, ages and draining state
//	-control-group GROUP
//	      a group whose members may use the control socket too (mode 0660)
//	-pidfile PATH
//	      written with the supervisor's pid once the first generation is
//	      ready (it never changes), removed at the end
//	-backoff D
//	      how long to wait before replacing a generation that died after
//	      it was ready (default 1s); doubled for each replacement that
//	      dies too, up to 30s
//	-rollback
//	      replace a release whose generation dies within -rollback-grace
//	      of being ready by the release that served before it, started
//	      from the supervisor's descriptor of its executable even if the
//	      file on disk was replaced since
//	-rollback-grace D
//	      see -rollback (default 1m)
//
// Under systemd (see examples/systemd/server-run.service): MainPID is
// the supervisor's and never changes, so Type=notify and
// Type=notify-reload need no PIDFile= and no NotifyAccess= beyond main.
// The supervisor sends READY=1 once the first generation is ready, and
// for each upgrade RELOADING=1, EXTEND_TIMEOUT_USEC= while the new
// generation starts, and READY=1 with a STATUS= saying how it went; a
// generation's own STATUS= and EXTEND_TIMEOUT_USEC= are relayed (and
// the serving one's RELOADING=1 and READY=1, for a program that reloads
// by itself); STOPPING=1 at the end. MAINPID=, STOPPING=1, FDSTORE=1 and
// WATCHDOG=1 from the program are ignored. ExecReload=tableflip upgrade
// -socket … makes systemctl reload fail when the upgrade fails;
// KillMode=mixed lets the supervisor alone signal the generations.
//
// The supervisor upgrades itself in place: when the file it was started
// from holds another executable (a new tableflip), it re-executes it
// after the next upgrade attempt, in its own process (same pid), keeping
// the generations, the sockets and the control socket; a new executable
// that cannot take over (it does not run, or does not know the state's
// version or the command line) is not executed, and the supervisor
// serves on.
//
// A generation that dies after it was ready is replaced by the same
// release after -backoff (with -rollback, soon after it was ready, by the
// previous release).
//
// Exit status: 0 after a stop; 1 when the first generation failed before
// it was ready, or the supervisor could not set up; 2 bad usage.
//
// Linux only.
package main

const runUsage = `usage: tableflip run [flags] -- program [args…]

Runs program under a supervisor whose pid never changes, and upgrades it
without dropping a connection: the program gets its listening sockets as
systemd passes them (fds 3, 4, … with LISTEN_FDS, LISTEN_FDNAMES and
LISTEN_PID) and says it is ready as it does to systemd (READY=1 to
NOTIFY_SOCKET), or is probed (-ready). SIGHUP, tableflip upgrade -socket
(with -control) or systemd's reload start a new generation; once it is
ready the old one gets -stop-signal and drains. A new generation that
fails or is not ready in time is stopped, and the old one serves on.
SIGTERM or SIGINT stops every generation, then the supervisor.

Exit status: 0 after a stop; 1 the first generation failed before it was
ready, or the supervisor could not set up; 2 bad usage.

flags:
`
