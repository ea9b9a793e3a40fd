//go:build linux

package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/examples/internal/checktest"
	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// TestCheck upgrades the program under load with tableflip check, with
// HTTP/1.1 and HTTP/2 clients.
func TestCheck(t *testing.T) {
	exe := checktest.Build(t, ".")
	cert, key, _, err := loadgen.WriteLoopbackCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	addr := checktest.FreeAddr(t, "tcp")
	pidFile := filepath.Join(t.TempDir(), "tls.pid")
	rep := checktest.Check(t, []string{"-url", "https://" + addr + "/", "-pidfile", pidFile, "-c", "2", "-upgrades", "3", "-interval", "100ms"},
		exe, "-addr", addr, "-cert", cert, "-key", key, "-pid-file", pidFile)
	if rep.Requests == 0 || len(rep.Upgrades) != 3 {
		t.Errorf("%d requests, %d upgrades; want some and 3", rep.Requests, len(rep.Upgrades))
	}
}

// A client resumes with the new generation the TLS session it began with
// the old one: the ticket keys came over in the state.
func TestSessionResumesAcrossUpgrade(t *testing.T) {
	exe := checktest.Build(t, ".")
	dir := t.TempDir()
	cert, key, clientTLS, err := loadgen.WriteLoopbackCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	addr := checktest.FreeAddr(t, "tcp")
	pidFile := filepath.Join(dir, "tls.pid")
	cmd := exec.Command(exe, "-addr", addr, "-cert", cert, "-key", key, "-pid-file", pidFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if pid, err := readPID(pidFile); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})

	clientTLS.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS, DisableKeepAlives: true}, Timeout: time.Minute}
	get := func() string {
		t.Helper()
		resp, err := client.Get("https://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	first := waitPID(t, pidFile, 0)
	waitAnswers(t, client, addr)
	get() // a session, and a ticket for it
	if got, want := get(), fmt.Sprintf("pid %d, resumed true", first); got != want {
		t.Fatalf("second connection to the first generation: %q, want %q", got, want)
	}
	if err := syscall.Kill(first, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	second := waitPID(t, pidFile, first)
	if got, want := get(), fmt.Sprintf("pid %d, resumed true", second); got != want {
		t.Errorf("after the upgrade: %q, want %q: the new generation took the old one's ticket", got, want)
	}
}

func readPID(pidFile string) (int, error) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, err
	}
	var pid int
	_, err = fmt.Sscan(string(b), &pid)
	return pid, err
}

// waitPID waits until the PID file names a pid other than not.
func waitPID(t *testing.T, pidFile string, not int) int {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for range 60_000 {
		if pid, err := readPID(pidFile); err == nil && pid != not {
			return pid
		}
		<-tick.C
	}
	t.Fatalf("%s did not name a new generation within a minute", pidFile)
	return 0
}

// waitAnswers waits until the server answers, which it may do a moment
// after it wrote its PID file.
func waitAnswers(t *testing.T, client *http.Client, addr string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
	for range 6000 {
		var resp *http.Response
		if resp, err = client.Get("https://" + addr + "/"); err == nil {
			resp.Body.Close()
			return
		}
		<-tick.C
	}
	t.Fatalf("no answer from %s: %v", addr, err)
}
