//go:build linux

package realsystemd

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Missing returns what this machine lacks to boot a System, or "" when
// nothing is missing.
func Missing() string {
	if os.Geteuid() != 0 {
		return "not root (namespaces, mounts and cgroups need it)"
	}
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("no %s (util-linux)", tool)
		}
	}
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		return "no /lib/systemd/systemd (package systemd)"
	}
	if _, err := cgroup2Root(); err != nil {
		return err.Error()
	}
	return ""
}

// Need skips the test when Missing says something is missing, saying
// what; with CI=true it fails the test instead: CI must run these tests.
func Need(t testing.TB) {
	t.Helper()
	if m := Missing(); m != "" {
		SkipOrFail(t, "realsystemd: can't boot systemd: "+m)
	}
}

// SkipOrFail skips the test with msg, or fails it when CI=true.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: failing instead of skipping)")
	}
	t.Skip(msg)
}
