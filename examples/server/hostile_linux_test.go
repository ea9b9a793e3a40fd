//go:build linux

package main

// Real-process tests that attack the README's program at hostile moments,
// one per finding of issue 13 that a process outside systemd can show.
// Each checks what a user of the program would check, over many bounded
// iterations; -hostile.scale runs more, -hostile.seed repeats a run.

import (
	"fmt"
	"slices"
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

// TestSIGHUPStorm sends SIGHUP every 5ms, for 2s, to whatever pid the PID
// file names, while clients send requests, as a deploy script retrying a
// reload might. Every SIGHUP either upgrades or is refused; none may take
// the service down (guarantee 3: never announce a process that an upgrade
// signal would kill) or refuse a connection.
func TestSIGHUPStorm(t *testing.T) {
	r := newReaper(t)
	runs := iterations(10)
	const (
		every = 5 * time.Millisecond
		storm = 2 * time.Second
	)
	var (
		lost                     []string
		refused, failed, ok      int64
		killedByHUP, signalsSent int
		firstFailures            []string
	)
	for run := range runs {
		s := startServer(t, r, config{})
		l := startLoad(t, s.addr, 4)
		if err := l.settle(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		tick := time.NewTicker(every)
		for time.Since(began) < storm && len(groupProcs(s.first)) > 0 {
			<-tick.C
			if pid := s.pidFromFile(); pid > 0 && unix.Kill(pid, unix.SIGHUP) == nil {
				signalsSent++
			}
		}
		tick.Stop()
		// The storm is over: a process must serve, whatever is still
		// under way.
		serveErr := s.waitServing(15 * time.Second)
		l.close()
		for pid, ws := range r.group(s.first) {
			if ws.Signaled() && ws.Signal() == unix.SIGHUP {
				killedByHUP++
				t.Logf("run %d: pid %d was killed by SIGHUP", run, pid)
			}
		}
		if serveErr != nil {
			named := s.pidFromFile()
			how := "not reaped here"
			if ws, ok := r.status(named); ok {
				how = describeStatus(ws)
			}
			lost = append(lost, fmt.Sprintf("run %d: %v; the PID file names pid %d (%s)", run, serveErr, named, how))
		}
		refused += l.refused.Load()
		failed += l.failed.Load()
		ok += l.ok.Load()
		for _, f := range l.failuresSince(time.Time{}) {
			if len(firstFailures) < 10 {
				firstFailures = append(firstFailures, fmt.Sprintf("run %d: %v", run, f))
			}
		}
		if serveErr != nil {
			t.Logf("run %d: %s", run, s.logTail())
		}
		s.stopAll(10 * time.Second)
	}
	t.Logf("%d runs, %d SIGHUPs sent, %d requests answered, %d failed (%d refused), %d processes killed by SIGHUP",
		runs, signalsSent, ok, failed, refused, killedByHUP)
	if len(lost) > 0 {
		t.Errorf("%d of %d storms left no process serving:\n%s", len(lost), runs, strings.Join(lost, "\n"))
	}
	if refused > 0 {
		t.Errorf("%d connections refused during the storms (want 0)", refused)
	}
	if failed > refused {
		t.Errorf("%d requests failed during the storms besides refused connections (want 0)", failed-refused)
	}
	if len(firstFailures) > 0 {
		t.Logf("first failures:\n%s", strings.Join(firstFailures, "\n"))
	}
}

// TestNewGenerationKilledBeforeReady upgrades a loaded server by SIGHUP
// and SIGKILLs the new generation before it is announced, as the OOM
// killer or a crash in its initialisation might. A new generation that
// dies before Ready must cost no request (guarantee 2): the old one serves
// on, and every connection the new one accepted is answered.
//
// Half the iterations strike at a random moment: uniform over the time a
// plain upgrade takes here (1.5 times the median of a few, at most 250ms
// as in issue 13); an upgrade takes some 20-40ms under -race on two cores.
// The other half strike as soon as the new generation holds a connection
// it accepted: the README program serves before Ready.
//
// A kill that lands after the new generation took over kills the serving
// process, a different experiment: such iterations are counted apart, the
// server is started afresh, and their failures are not counted. An
// upgrade that completes before the moment to strike is an ordinary
// upgrade under load, whose failures are counted.
func TestNewGenerationKilledBeforeReady(t *testing.T) {
	rng := newRand(t)
	r := newReaper(t)
	s := startServer(t, r, config{})
	l := startLoad(t, s.addr, 8)
	if err := l.settle(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	var durations []time.Duration
	for range 5 {
		if _, err := s.waitUpgradable(30 * time.Second); err != nil {
			t.Fatalf("before a plain upgrade: %v\n%s", err, s.logTail())
		}
		old := s.pidFromFile()
		from := time.Now()
		unix.Kill(old, unix.SIGHUP)
		for s.pidFromFile() == old && time.Since(from) < 30*time.Second {
			time.Sleep(100 * time.Microsecond)
		}
		durations = append(durations, time.Since(from))
	}
	slices.Sort(durations)
	strikeWithin := min(250*time.Millisecond, durations[len(durations)/2]*3/2)
	t.Logf("plain upgrades took %v: random strikes within %v of SIGHUP", durations, strikeWithin)

	n := iterations(200)
	type window struct {
		from, to time.Time
		i        int
		excluded bool
	}
	var (
		windows                        []window
		killed                         = map[string]int{}
		tookOver, killedLate, answered int
	)
	for i := range n {
		st, err := s.waitUpgradable(30 * time.Second)
		if err != nil {
			t.Fatalf("iteration %d: %v\n%s", i, err, s.logTail())
		}
		old := st.PID
		fd, err := openPidfd(old)
		if err != nil {
			t.Fatal(err)
		}
		mode := "at a random moment"
		if i%2 == 1 {
			mode = "once it has accepted"
		}
		delay := time.Duration(rng.Int64N(int64(strikeWithin)))
		from := time.Now()
		if err := unix.Kill(old, unix.SIGHUP); err != nil {
			t.Fatal(err)
		}
		victim, victimAnswered := 0, 0
	strike:
		for {
			switch {
			case fd.exited():
				break strike
			case time.Since(from) > 30*time.Second:
				t.Fatalf("iteration %d: 30s after SIGHUP to %d, no new generation to kill\n%s", i, old, s.logTail())
			}
			if kids := s.children(old); len(kids) > 0 {
				kid := kids[0].pid
				ready := time.Since(from) >= delay
				if mode == "once it has accepted" {
					ready = acceptedOwn(kid, old)
				}
				switch {
				case s.pidFromFile() == kid:
					break strike // it took over already
				case ready:
					unix.Kill(kid, unix.SIGKILL)
					victim, victimAnswered = kid, l.answeredBy(kid)
					break strike
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
		excluded := false
		switch {
		case victim == 0:
			// An ordinary upgrade.
			tookOver++
		default:
			// Either the old generation learns that the new one
			// died, and serves on, or it had handed over already.
			deadline := time.Now().Add(30 * time.Second)
			for {
				if fd.exited() {
					how := "not reaped here"
					if ws, ok := r.waitReaped(old, 5*time.Second); ok {
						how = describeStatus(ws)
					}
					killedLate++
					excluded = true
					t.Logf("iteration %d: new generation %d killed %s (%s), once it had taken over: pid %d %s; starting afresh\n%s",
						i, victim, mode, time.Since(from).Round(time.Millisecond), old, how, s.logTail())
					s.kill()
					s = startServer(t, r, config{addr: s.addr, dir: s.dir})
					break
				}
				resp, err := s.control(10*time.Second, "status")
				if err == nil && resp.OK && resp.Status.PID == old && !resp.Status.Upgrading && resp.Status.UpgradesFailed > st.UpgradesFailed {
					killed[mode]++
					if victimAnswered > 0 {
						answered++
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("iteration %d: 30s after SIGKILL to new generation %d, pid %d neither exited nor reported the failed upgrade (%v, %v)\n%s",
						i, victim, old, resp, err, s.logTail())
				}
				time.Sleep(time.Millisecond)
			}
		}
		fd.close()
		if err := l.settle(10 * time.Second); err != nil {
			t.Fatalf("iteration %d: %v\n%s", i, err, s.logTail())
		}
		windows = append(windows, window{from: from, to: time.Now(), i: i, excluded: excluded})
	}
	l.close()
	var counted, excluded []string
	for _, f := range l.failuresSince(time.Time{}) {
		in := "outside the iterations"
		skip := false
		for _, w := range windows {
			if !f.at.Before(w.from) && !f.at.After(w.to) {
				in = fmt.Sprintf("iteration %d", w.i)
				skip = w.excluded
			}
		}
		if skip {
			excluded = append(excluded, in+": "+f.String())
		} else {
			counted = append(counted, in+": "+f.String())
		}
	}
	t.Logf("%d iterations: new generations killed before Ready: %d at a random moment, %d once they had accepted a connection (%d of all had answered a client); %d upgrades completed before the strike; %d killed after taking over (%d failures there, not counted); %d requests answered",
		n, killed["at a random moment"], killed["once it has accepted"], answered, tookOver, killedLate, len(excluded), l.ok.Load())
	if len(counted) > 0 {
		t.Errorf("%d requests failed (want 0):\n%s", len(counted), first(counted, 20))
	}
	s.stopAll(10 * time.Second)
}
