//go:build linux

package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain runs the sample server when the runner (the test itself)
// starts this binary as a generation.
func TestMain(m *testing.M) {
	if os.Getenv(envRole) == "server" {
		os.Exit(runServer())
	}
	os.Exit(m.Run())
}

// TestRun runs every figure with the smallest numbers, so that a change
// that breaks an implementation, the runner or the report fails CI.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := &config{
		upgrades:       2,
		sockets:        []int{20},
		socketUpgrades: 1,
		loadUpgrades:   2,
		segment:        1,
		conns:          4,
		steady:         1,
		footprint:      2,
		runUpgrades:    2,
		out:            "-",
	}
	res, err := run(ctx, cfg, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	for _, impl := range impls {
		if n := len(res.ready[impl]); n != cfg.upgrades {
			t.Errorf("%s: %d upgrades measured, want %d", impl, n, cfg.upgrades)
		}
		for _, r := range res.ready[impl] {
			if r.Ready <= 0 || r.Ready > r.Seen {
				t.Errorf("%s: upgrade to ready %v, seen by the runner %v", impl, r.Ready, r.Seen)
			}
		}
		f := res.footprint[impl]
		if f == nil || f.Gens != cfg.footprint+1 || f.First.FDs == 0 || f.Last.RSS == 0 {
			t.Errorf("%s: footprint %+v", impl, f)
		}
		for _, lr := range res.load {
			if a := lr.Per[impl]; a.Upgrades != cfg.loadUpgrades || a.Requests == 0 {
				t.Errorf("%s, %s: %d upgrades, %d requests", impl, lr.Mode.Name, a.Upgrades, a.Requests)
			}
		}
	}
	for _, impl := range []string{runLibrary, runRun} {
		if n := len(res.run[impl]); n != cfg.runUpgrades {
			t.Errorf("figure 6, %s: %d upgrades measured, want %d", impl, n, cfg.runUpgrades)
		}
	}
	md := res.markdown()
	for _, want := range []string{"## 1.", "## 2.", "N=20 median", "## 3.", "## 4.", "## 5.", "## 6.", "## Targets"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if left := descendants(os.Getpid()); len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
