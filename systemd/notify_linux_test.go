package systemd

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
)

func TestNotifyAbstractSocket(t *testing.T) {
	addr := fmt.Sprintf("@tableflip-systemd-test-%d-%s", os.Getpid(), t.Name())
	s := listenNotify(t, addr)
	n := newTestNotifier(t, s)
	if err := n.MainPIDReady(77, "over an abstract socket"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.recv(); got != "MAINPID=77\nREADY=1\nSTATUS=over an abstract socket" {
		t.Fatalf("got %q", got)
	}
	// An abstract name nobody listens on: a clear error, no file
	// involved.
	n2, err := NotifierFor(addr + "-absent")
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Ready(""); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Ready() = %v, want ECONNREFUSED", err)
	}
}
