//go:build linux

package main

import (
	"path/filepath"
	"testing"

	"github.com/seed589fcc9d/tableflip/examples/internal/checktest"
)

// TestCheck upgrades the program under load with tableflip check: no
// line is lost, and each upgrade's drain deadline cuts each long-lived
// connection, which the report says.
func TestCheck(t *testing.T) {
	const upgrades, conns = 3, 2
	exe := checktest.Build(t, ".")
	addr := checktest.FreeAddr(t, "tcp")
	pidFile := filepath.Join(t.TempDir(), "tcp.pid")
	rep := checktest.Check(t,
		[]string{"-url", "tcp://" + addr, "-pidfile", pidFile, "-mode", "line,longlived", "-c", "2", "-pace", "5ms",
			"-upgrades", "3", "-interval", "100ms"},
		exe, "-addr", addr, "-pid-file", pidFile, "-drain-timeout", "300ms")
	if rep.Requests == 0 || rep.Cut != upgrades*conns {
		t.Errorf("%d requests, %d long-lived connections cut; want some, and %d (each at each upgrade)", rep.Requests, rep.Cut, upgrades*conns)
	}
}
