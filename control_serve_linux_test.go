package tableflip

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeHandler answers as a process that is not a generation would.
type fakeHandler struct {
	outcome UpgradeOutcome
	err     error
	block   bool          // Upgrade waits for ctx
	entered chan struct{} // closed as a blocking Upgrade starts
}

func (h *fakeHandler) Upgrade(ctx context.Context) (UpgradeOutcome, error) {
	if h.block {
		close(h.entered)
		<-ctx.Done()
		return UpgradeOutcome{}, ErrStopped
	}
	return h.outcome, h.err
}

func (h *fakeHandler) Status() Stats {
	return Stats{PID: 1234, Generation: 7, Generations: []GenerationInfo{{PID: 99, Generation: 7, Conns: -1}}}
}

// TestServeControl: ServeControl speaks the control protocol for a
// handler: status, an upgrade's outcome, a failure with its reason and
// the new generation's exit status, and Close, which ends an upgrade
// under way and leaves the socket file to its owner.
func TestServeControl(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	h := &fakeHandler{outcome: UpgradeOutcome{PID: 99, Generation: 7, Seconds: 0.5}}
	ln, err := ListenControl(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("socket file: %v, %v; want mode 0600", info.Mode(), err)
	}
	s, err := ServeControl(ln, "", h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call := func(cmd string) *ControlResponse {
		t.Helper()
		resp, err := ControlCall(ctx, path, cmd)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		return resp
	}
	if resp := call(ControlStatus); !resp.OK || resp.Status.PID != 1234 || resp.Status.Generations[0].PID != 99 {
		t.Errorf("status: %+v", resp)
	}
	if resp := call(ControlUpgrade); !resp.OK || *resp.Upgrade != h.outcome {
		t.Errorf("upgrade: %+v, want %+v", resp, h.outcome)
	}
	h.err = &ChildError{PID: 100, ExitCode: 3, Err: ErrChildExited}
	resp := call(ControlUpgrade)
	if e := resp.Error; resp.OK || e == nil || e.Reason != ReasonChildExited || e.PID != 100 || e.ExitCode == nil || *e.ExitCode != 3 {
		t.Errorf("failed upgrade: %+v (%+v), want child_exited, pid 100, exit code 3", resp, resp.Error)
	}
	if e := NewControlError(errors.New("no file")); e.Reason != ReasonFailed || e.Message != "no file" {
		t.Errorf("NewControlError of a plain error: %+v", e)
	}

	h.block, h.entered = true, make(chan struct{})
	answered := make(chan *ControlResponse, 1)
	go func() {
		resp, _ := ControlCall(ctx, path, ControlUpgrade)
		answered <- resp
	}()
	<-h.entered
	s.Close()
	if resp := <-answered; resp == nil || resp.OK || resp.Error.Reason != ReasonStopped {
		t.Errorf("an upgrade under way at Close: %+v, want reason %s", resp, ReasonStopped)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("Close removed the socket file: %v", err)
	}
	if _, err := ControlCall(ctx, path, ControlStatus); err == nil {
		t.Error("a call after Close was answered")
	}
}
