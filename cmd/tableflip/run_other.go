//go:build !linux

package main

import (
	"fmt"
	"io"
	"runtime"
)

// runCommand cannot run here: the supervisor needs Linux (pidfds,
// SO_PASSCRED on its notify socket, sock_diag for its probes, execve in
// place).
func runCommand(args []string, stderr io.Writer) int {
	fmt.Fprintf(stderr, "tableflip run: needs Linux (pidfds, SO_PASSCRED, sock_diag); not supported on %s\n", runtime.GOOS)
	return exitUsage
}

func runStateCommand(args []string, stderr io.Writer) int { return runCommand(args, stderr) }

func zygoteCommand(args []string, stderr io.Writer) int { return runCommand(args, stderr) }
