//go:build linux

package tableflip

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkUpgrade times Upgrade in a real server, from the call to the
// new generation's acknowledged readiness, with 1, 100, 1000 and 4000
// listening sockets passed on. The old generation's exit is not timed.
//
//	go test -run '^$' -bench Upgrade -benchtime 50x .
func BenchmarkUpgrade(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 4000} {
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) {
			// The server's own TCP and UDP sockets count too.
			s := startServer(b, serverConfig{env: []string{extraEnv + "=" + strconv.Itoa(max(n-2, 0))}})
			took := timeUpgrades(b, s, nil)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-median")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "ms-p99")
		})
	}
}

// BenchmarkUpgradeState times Upgrade with 1, 64 and 256 MiB of state
// handed on, and reports the peak RSS of both generations.
//
//	go test -run '^$' -bench UpgradeState -benchtime 5x .
func BenchmarkUpgradeState(b *testing.B) {
	for _, mib := range []int64{1, 64, 256} {
		b.Run(fmt.Sprintf("MiB=%d", mib), func(b *testing.B) {
			s := startStateServer(b, mib<<20)
			s.waitEvent(s.pid, "peak-rss")
			var oldPeak, newPeak int
			took := timeUpgrades(b, s, func(old int) {
				p, _ := strconv.Atoi(strings.Fields(s.waitEvent(old, "peak-rss"))[1])
				oldPeak = max(oldPeak, p)
				p, _ = strconv.Atoi(strings.Fields(s.waitEvent(s.pid, "peak-rss"))[1])
				newPeak = max(newPeak, p)
			})
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-median")
			b.ReportMetric(float64(oldPeak)/1024, "MiB-old-peak-rss")
			b.ReportMetric(float64(newPeak)/1024, "MiB-new-peak-rss")
		})
	}
}

// timeUpgrades upgrades s b.N times, timing each Upgrade call only, and
// returns the times sorted. between, if not nil, runs after each upgrade
// with the old generation's pid, before it is reaped.
func timeUpgrades(b *testing.B, s *server, between func(old int)) []time.Duration {
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		reply := s.command("upgrade")
		took = append(took, time.Since(start))
		b.StopTimer()
		if reply != "ok" {
			b.Fatalf("upgrade: %s", reply)
		}
		old := s.pid
		s.pid, _ = strconv.Atoi(s.waitLine("ready ")[1])
		if between != nil {
			between(old)
		}
		s.waitEvent(old, "exiting")
		s.reap(old)
		s.command("waitparent")
		b.StartTimer()
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	return took
}
