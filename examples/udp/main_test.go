//go:build linux

package main

import (
	"path/filepath"
	"testing"

	"github.com/seed589fcc9d/tableflip/examples/internal/checktest"
)

// TestCheck upgrades the program under load with tableflip check: no
// datagram is lost.
func TestCheck(t *testing.T) {
	exe := checktest.Build(t, ".")
	addr := checktest.FreeAddr(t, "udp")
	pidFile := filepath.Join(t.TempDir(), "udp.pid")
	rep := checktest.Check(t, []string{"-url", "udp://" + addr, "-pidfile", pidFile, "-c", "8", "-upgrades", "5", "-interval", "100ms"},
		exe, "-addr", addr, "-pid-file", pidFile)
	if rep.Requests == 0 || len(rep.Upgrades) != 5 {
		t.Errorf("%d datagrams, %d upgrades; want some and 5", rep.Requests, len(rep.Upgrades))
	}
}
