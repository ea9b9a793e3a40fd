//go:build linux

package tableflip

import (
	"flag"
	"strconv"
	"testing"
	"time"
)

var soakUpgrades = flag.Int("soak", 0, "run TestSoak with this many upgrades (1000 for the figures in docs/faults.md)")

// TestSoak upgrades a server many times under load: no request fails, the
// last generation holds as many descriptors as the first and about as
// much memory, and no process is left. Not in the default run:
//
//	go test -run TestSoak -soak 1000 .
func TestSoak(t *testing.T) {
	n := *soakUpgrades
	if n == 0 {
		t.Skip("soak not asked for: -soak N")
	}
	s := startFaultServer(t)
	firstFDs, firstRSS := s.command("fds"), s.command("rss")
	l := startLoad(s.tcp)
	start := time.Now()
	for range n {
		s.upgrade()
	}
	elapsed := time.Since(start)
	ok := l.finish(t, false)
	lastFDs, lastRSS := s.command("fds"), s.command("rss")
	if lastFDs != firstFDs {
		t.Errorf("fds: first generation %s, generation %d %s", firstFDs, n+1, lastFDs)
	}
	// Memory: a fresh process each time, so the same figure up to what
	// the allocator keeps; 10% is far below any leak that 1000
	// generations of inherited state would show.
	first, _ := strconv.Atoi(firstRSS)
	last, _ := strconv.Atoi(lastRSS)
	if first <= 0 || last <= 0 || last > first+first/10 {
		t.Errorf("VmRSS: first generation %d kB, generation %d %d kB (tolerance 10%%)", first, n+1, last)
	}
	lastPID := s.pid
	s.stopAll(t)
	t.Logf("%d upgrades in %v (%v each), %d requests answered, 0 failed; fds %s -> %s; VmRSS %d kB -> %d kB; last pid %d",
		n, elapsed.Round(time.Millisecond), (elapsed / time.Duration(n)).Round(time.Microsecond), ok,
		firstFDs, lastFDs, first, last, lastPID)
}
