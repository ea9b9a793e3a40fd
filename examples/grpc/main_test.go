//go:build linux

package main

import (
	"path/filepath"
	"testing"

	"github.com/seed589fcc9d/tableflip/examples/internal/checktest"
)

// TestCheck upgrades the program under load with tableflip check, making
// unary gRPC calls to its health service: no call fails.
func TestCheck(t *testing.T) {
	exe := checktest.Build(t, ".")
	addr := checktest.FreeAddr(t, "tcp")
	pidFile := filepath.Join(t.TempDir(), "grpc.pid")
	rep := checktest.Check(t, []string{"-url", "http://" + addr + "/grpc.health.v1.Health/Check", "-mode", "grpc", "-pidfile", pidFile,
		"-c", "4", "-upgrades", "5", "-interval", "100ms"},
		exe, "-addr", addr, "-pid-file", pidFile)
	if rep.Requests == 0 || len(rep.Upgrades) != 5 {
		t.Errorf("%d calls, %d upgrades; want some and 5", rep.Requests, len(rep.Upgrades))
	}
}
