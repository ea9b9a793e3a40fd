//go:build linux

package main

// Real-process tests that attack the README's program at hostile moments,
// one per finding of issue 13 that a process outside systemd can show.
// Each checks what a user of the program would check, over many bounded
// iterations; -hostile.scale runs more, -hostile.seed repeats a run.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAnnouncedPIDIsTrue upgrades an idle server many times and checks
// what it announces against what the kernel says (guarantee 3): at the
// moment the old generation has exited (its pidfd turns readable), the
// PID file must name the new one; a successful "upgrade" answer on the
// control socket must arrive when the PID file names the new pid already;
// and a process that the PID file names, and that serves, must not refuse
// an upgrade as not ready.
func TestAnnouncedPIDIsTrue(t *testing.T) {
	for _, via := range []string{"SIGHUP", "control"} {
		t.Run(via, func(t *testing.T) {
			r := newReaper(t)
			s := startServer(t, r, config{})
			n := iterations(300)
			var (
				stale   []string // PID file named the exited pid
				longest time.Duration
				early   []string // control answer before the PID file named the new pid
				refused []string // announced, serving, and "not ready"
			)
			for i := range n {
				old := s.pidFromFile()
				fd, err := openPidfd(old)
				if err != nil {
					t.Fatalf("upgrade %d: pidfd of %d, which the PID file names: %v", i, old, err)
				}
				_, logAt := s.logSince(0)
				answer, refusal := upgradeAndWatch(t, s, via, old, fd)
				for refusal != "" {
					// Retried, as an operator would once the
					// process is ready; counted as a failure.
					refused = append(refused, fmt.Sprintf("upgrade %d: pid %d, named by the PID file and serving: %s", i, old, refusal))
					if len(refused) > 20 {
						t.Fatalf("%d upgrades refused:\n%s", len(refused), first(refused, 20))
					}
					answer, refusal = upgradeAndWatch(t, s, via, old, fd)
				}
				exitedAt := time.Now()
				named := s.pidFromFile()
				if named == old || named == 0 {
					// How long until it is put right.
					for (named == old || named == 0) && time.Since(exitedAt) < 5*time.Second {
						named = s.pidFromFile()
					}
					d := time.Since(exitedAt)
					longest = max(longest, d)
					stale = append(stale, fmt.Sprintf("upgrade %d: pid %d exited, PID file named it for %s more", i, old, d.Round(10*time.Microsecond)))
				}
				fd.close()
				if via == "control" {
					a := <-answer
					if a.pid != a.named {
						early = append(early, fmt.Sprintf("upgrade %d: answer named pid %d, PID file named %d", i, a.pid, a.named))
					}
				}
				if err := s.waitServing(30 * time.Second); err != nil {
					t.Fatalf("after upgrade %d: %v\n%s", i, err, s.logTail())
				}
				if new := s.pidFromFile(); new == old {
					t.Fatalf("upgrade %d: pid %d exited, and the PID file still names it", i, old)
				}
				if text, _ := s.logSince(logAt); text != "" {
					t.Logf("upgrade %d: the generations logged:\n%s", i, text)
				}
			}
			if len(stale) > 0 {
				t.Errorf("%d of %d upgrades: when the old generation had exited, the PID file still named it (longest %s more):\n%s",
					len(stale), n, longest.Round(10*time.Microsecond), first(stale, 10))
			}
			if len(early) > 0 {
				t.Errorf("%d of %d successful control-socket upgrades answered before the PID file named the new pid:\n%s",
					len(early), n, first(early, 10))
			}
			if len(refused) > 0 {
				t.Errorf("%d of %d upgrades were refused by the process that the PID file named and that served:\n%s",
					len(refused), n, first(refused, 10))
			}
			s.stopAll(10 * time.Second)
		})
	}
}

// controlAnswer is a successful "upgrade" answer: the pid it named, and
// the one the PID file named when it arrived.
type controlAnswer struct{ pid, named int }

// upgradeAndWatch asks old for an upgrade, by SIGHUP or on the control
// socket, and returns once old has exited, or with the reason if the
// upgrade was refused. For the control socket, the answer comes on the
// channel, read when it arrived.
func upgradeAndWatch(t *testing.T, s *server, via string, old int, fd pidfd) (<-chan controlAnswer, string) {
	t.Helper()
	answer := make(chan controlAnswer, 1)
	refused := make(chan string, 1)
	_, logAt := s.logSince(0)
	switch via {
	case "SIGHUP":
		if err := unix.Kill(old, unix.SIGHUP); err != nil {
			t.Fatalf("SIGHUP to %d: %v", old, err)
		}
	case "control":
		go func() {
			resp, err := s.control(30*time.Second, "upgrade")
			named := s.pidFromFile()
			switch {
			case err != nil:
				refused <- err.Error()
			case !resp.OK:
				refused <- resp.Error.Reason + ": " + resp.Error.Error()
			default:
				answer <- controlAnswer{pid: resp.Upgrade.PID, named: named}
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for !fd.wait(5 * time.Millisecond) {
		select {
		case why := <-refused:
			return nil, why
		default:
		}
		// The README program logs a failed upgrade; that is all
		// SIGHUP's sender can learn.
		if text, _ := s.logSince(logAt); via == "SIGHUP" && strings.Contains(text, "upgrade failed") {
			return nil, strings.TrimSpace(text)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive 30s after an upgrade was asked for by %s\n%s", old, via, s.logTail())
		}
	}
	if ws, ok := s.r.waitReaped(old, 5*time.Second); ok && ws.Signaled() && ws.Signal() == unix.SIGHUP {
		t.Fatalf("pid %d, which the PID file named and which served, was killed by the SIGHUP meant to upgrade it\n%s", old, s.logTail())
	}
	return answer, ""
}

// first joins the first n lines of list, and says how many more there are.
func first(list []string, n int) string {
	if len(list) <= n {
		return strings.Join(list, "\n")
	}
	return strings.Join(list[:n], "\n") + fmt.Sprintf("\n… and %d more", len(list)-n)
}
