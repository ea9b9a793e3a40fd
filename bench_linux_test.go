//go:build linux

package tableflip

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

func init() { registerBenchmarkHelper("holder", helperHolder) }

// helperHolder holds $TABLEFLIP_TEST_HOLD loopback connections (both
// ends: twice as many sockets), prints "held <n>", and holds them until
// its standard input closes: the unrelated sockets of BenchmarkStats.
func helperHolder() int {
	n, _ := strconv.Atoi(os.Getenv("TABLEFLIP_TEST_HOLD"))
	base, _ := strconv.Atoi(os.Getenv("TABLEFLIP_TEST_HOLD_BASE"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	var dialed []net.Conn
	for i := range n {
		// 20000 ports a source address, well inside the ephemeral range.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+(base+i)/20000))}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		dialed = append(dialed, c)
	}
	fmt.Println("held", len(dialed))
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// holdConns starts processes that hold n unrelated loopback connections
// until the benchmark ends, at most holdPerProcess each: the descriptor
// limit of a process here is 20000, and cannot be raised.
func holdConns(b *testing.B, n int) {
	b.Helper()
	const holdPerProcess = 9000
	for base := 0; base < n; base += holdPerProcess {
		k := min(holdPerProcess, n-base)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helper("holder"), "TABLEFLIP_TEST_HOLD="+strconv.Itoa(k),
			"TABLEFLIP_TEST_HOLD_BASE="+strconv.Itoa(base))
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			stdin.Close()
			cmd.Wait()
		})
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != fmt.Sprintf("held %d\n", k) {
			b.Fatalf("holder: %q", line)
		}
	}
}

// BenchmarkStats times Upgrader.Stats in a first generation that holds
// 10 connections of its own, and the control socket's status of a server
// whose previous generation still drains one connection, beside 0, 10 000
// and 50 000 loopback connections that another process holds. Both should
// be flat across the three: they cost what the generations hold.
//
//	go test -run '^$' -bench Stats -benchtime 2000x .
func BenchmarkStats(b *testing.B) {
	for _, hostConns := range []int{0, 10000, 50000} {
		b.Run(fmt.Sprintf("host=%d/in-process", hostConns), func(b *testing.B) {
			holdConns(b, hostConns)
			u := firstGeneration(b, Options{})
			ln, err := u.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			for range 10 {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				sc, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				defer sc.Close()
			}
			if err := u.Ready(); err != nil {
				b.Fatal(err)
			}
			if got := u.Stats().Generations[0].Conns; got != 10 {
				b.Fatalf("Stats counts %d connections, want 10", got)
			}
			reportMedian(b, func() { u.Stats() })
		})
		b.Run(fmt.Sprintf("host=%d/status", hostConns), func(b *testing.B) {
			holdConns(b, hostConns)
			s, sock := startGenServer(b, maxGenEnv+"=3")
			ctl := filepath.Join(filepath.Dir(sock), "ctl.sock")
			c, err := net.Dial("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintln(c, "echo")
			bufio.NewReader(c).ReadString('\n')
			s.upgradeDraining()
			unanswered := 0
			reportMedian(b, func() {
				resp, err := ControlCall(context.Background(), ctl, ControlStatus)
				if err != nil || !resp.OK || len(resp.Status.Generations) != 2 {
					b.Fatalf("status: %+v, %v; want two generations", resp, err)
				}
				switch n := resp.Status.Generations[0].Conns; n {
				case 1:
				case -1:
					// Did not answer within connCountWait: a busy
					// machine.
					unanswered++
				default:
					b.Fatalf("the draining generation holds 1 connection; status says %d", n)
				}
			})
			b.ReportMetric(float64(unanswered), "unanswered")
		})
	}
}

// reportMedian runs f b.N times and reports the median and p99 time.
func reportMedian(b *testing.B, f func()) {
	took := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		f()
		took[i] = time.Since(start)
	}
	b.StopTimer()
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds())/1000, "µs-median")
	b.ReportMetric(float64(took[len(took)*99/100].Nanoseconds())/1000, "µs-p99")
}
