//go:build !linux

// Command bench measures graceful upgrades; it runs on Linux only, where
// it reads /proc and becomes a child subreaper.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench: runs on Linux only")
	os.Exit(2)
}
