// Command tableflip checks that a server upgrades without losing requests,
// and upgrades a running server through its control socket.
//
// Usage:
//
//	tableflip check [flags]                      check the built-in sample server
//	tableflip check [flags] -- ./myserver args…  check your own server
//	tableflip upgrade -socket PATH [-timeout D] [-json]
//	tableflip status -socket PATH [-timeout D] [-json]
//	tableflip run [flags] -- program args…          supervise any program
//
// upgrade asks the server whose tableflip.Options.ControlSocket is PATH to
// upgrade and prints the outcome: exit status 0 when the new generation is
// ready, 1 with the reason when the upgrade failed or was refused, 3 when
// the socket did not answer. status prints the server's generation,
// readiness and upgrade counters.
//
// check starts the server, puts it under load on loopback, upgrades it a
// number of times, and reports what the clients saw: requests sent and
// failed (by kind of failure), long-lived connections that draining
// generations cut, upgrade-to-ready latency, how long each old generation
// took to exit, request latency in steady state and during upgrades, fds
// (connections apart) and memory of the first and last generation, and
// processes left behind. It loads HTTP servers (http://, https://, and
// gRPC calls), line protocols over TCP (tcp://: each exchange sends a line
// and reads it back) and datagram servers (udp://). The server starts as
// a service manager starts it, in a process group of its own and with the
// upgrade signal and SIGTERM at their default action, even when the check
// itself runs under nohup. Run "tableflip check -h" for the flags.
//
// # Exit status
//
// 0 when no request was lost and nothing leaked; 1 when the check ran and
// found lost requests or leaks; 2 for bad usage; 3 when the server could
// not be checked (it did not start, never became ready, ignored the upgrade
// signal or exited); 130 when interrupted.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/seed589fcc9d/tableflip/internal/supervisor"
)

// Exit statuses.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitServer      = 3
	exitInterrupted = 130
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "check":
		return checkCommand(args[1:], stdout, stderr)
	case "upgrade", "status":
		return controlCommand(args[0], args[1:], stdout, stderr)
	case sampleServerCommand:
		return sampleServer(args[1:], stderr)
	case "run":
		return runCommand(args[1:], stderr)
	case supervisor.ZygoteCommand:
		return zygoteCommand(args[1:], stderr)
	case supervisor.StateCommand:
		return runStateCommand(args[1:], stderr)
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "tableflip: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: tableflip <command> [arguments]

commands:
  check    upgrade a server under load and report what clients saw
           (tableflip check -h for its flags)
  upgrade  upgrade a running server through its control socket, and say
           whether it worked (tableflip upgrade -socket PATH)
  status   show a running server's generation and upgrades
           (tableflip status -socket PATH)
  run      supervise any program with zero-downtime upgrades, under a pid
           that never changes (tableflip run -h for its flags)
`)
}
