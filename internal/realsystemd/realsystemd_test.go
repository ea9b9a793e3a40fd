//go:build linux

package realsystemd

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// builds returns the systemd builds to boot: the machine's and the
// backports one.
func builds(t *testing.T) map[string]string {
	Need(t)
	usr, err := Backports(context.Background())
	if err != nil {
		SkipOrFail(t, err.Error())
	}
	return map[string]string{"machine": "", "backports": usr}
}

// TestBoot boots each build, checks that its journal works, that a unit
// runs from the bound /usr/local/bin, that the test reaches the
// namespace's loopback, and that tear-down leaves nothing behind.
func TestBoot(t *testing.T) {
	for name, usr := range builds(t) {
		t.Run(name, func(t *testing.T) {
			bin := t.TempDir()
			script := "#!/bin/sh\necho hello from $$\nexec sleep infinity\n"
			if err := os.WriteFile(filepath.Join(bin, "hello"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			s := Boot(t, Options{Usr: usr, Bin: bin, Units: map[string]string{
				"hello.service": "[Service]\nExecStart=/usr/local/bin/hello\n",
			}})
			t.Logf("booted systemd %d as pid %d", s.Version, s.PID1())
			if usr != "" && s.Version < 253 {
				t.Errorf("backports booted systemd %d, want 253 or later", s.Version)
			}
			if out, err := s.Systemctl("is-active", "systemd-journald.service"); err != nil {
				t.Fatalf("journald: %q %v", out, err)
			}
			if _, err := s.Systemctl("start", "hello.service"); err != nil {
				t.Fatal(err)
			}
			entries, err := s.WaitJournal(10*time.Second, func(es []Entry) bool {
				for _, e := range es {
					if strings.HasPrefix(e["MESSAGE"], "hello from") {
						return true
					}
				}
				return false
			}, "-u", "hello.service")
			if err != nil {
				t.Fatalf("%v: %v", err, entries)
			}
			for _, e := range entries {
				if strings.HasPrefix(e["MESSAGE"], "hello from") {
					t.Logf("%s", e)
					if e["_SYSTEMD_UNIT"] != "hello.service" {
						t.Errorf("the unit's first line is filed under %q, want hello.service: %s", e["_SYSTEMD_UNIT"], e)
					}
				}
			}
			// A listener made in the namespace is reached by Dial, and not
			// from the machine's own loopback.
			var ln net.Listener
			if err := s.InNetns(func() { ln, err = net.Listen("tcp", "127.0.0.1:8081") }); err != nil {
				t.Fatal(err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "inside") }))
			client := &http.Client{Transport: &http.Transport{DialContext: s.Dial}, Timeout: 10 * time.Second}
			resp, err := client.Get("http://127.0.0.1:8081/")
			if err != nil {
				t.Fatalf("GET from inside the namespace: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "inside" {
				t.Errorf("GET from inside the namespace: %q, want \"inside\"", body)
			}
			if c, err := net.DialTimeout("tcp", "127.0.0.1:8081", time.Second); err == nil {
				c.Close()
				t.Errorf("the namespace's listener is reachable from the machine's loopback")
			}

			cg := s.cgroup
			pid := s.PID1()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(cg); !os.IsNotExist(err) {
				t.Errorf("cgroup %s left behind: %v", cg, err)
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); !os.IsNotExist(err) {
				t.Errorf("PID 1 (%d) still runs", pid)
			}
		})
	}
}
