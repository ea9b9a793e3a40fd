//go:build linux

package proctree

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestReaper: a child that exits is reaped, with its status and time, and
// a waiter that asked before the exit is told; the tree shows a child
// while it runs.
func TestReaper(t *testing.T) {
	r := New()
	defer r.Close()
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exec sleep 100"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	r.Forget(pid)
	reaped := r.Reaped(pid)
	if !r.Alive(pid) {
		t.Fatalf("running child %d: Alive false", pid)
	}
	found := false
	for _, st := range Descendants(os.Getpid()) {
		found = found || st.PID == pid && st.PPID == os.Getpid()
	}
	if !found {
		t.Errorf("Descendants of the test lack its child %d", pid)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	<-reaped
	e, ok := r.Exit(pid)
	if !ok || !e.Status.Signaled() || e.Status.Signal() != syscall.SIGTERM || e.At.IsZero() {
		t.Errorf("Exit(%d) = %v, %t; want killed by SIGTERM, with a time", pid, e, ok)
	}
	if e.String() != "killed by SIGTERM" {
		t.Errorf("String() = %q", e.String())
	}
	if r.Alive(pid) {
		t.Errorf("reaped child: Alive true")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if at, err := r.WaitExit(ctx, pid, time.Millisecond); err != nil || !at.Equal(e.At) {
		t.Errorf("WaitExit = %v, %v; want the reap time %v", at, err, e.At)
	}
}
