//go:build linux

// Command bench measures graceful upgrades of one sample HTTP server built
// three ways: on this module (Upgrader and drain), on cloudflare/tableflip
// v1.2.3 as its README shows, and on a bare fork/exec floor. It alternates
// the implementations upgrade by upgrade or load segment by load segment,
// and writes BENCHMARKS.md at the root of the repository.
//
// Run it from the bench directory:
//
//	go run .          # the numbers of the issue (about ten minutes)
//	go run . -quick   # a smaller run of a minute or two
//
// The same binary is the sample server: the runner starts it with
// BENCH_ROLE=server, and every implementation re-executes it as its next
// generation.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// envRole selects the server side of the binary.
const envRole = "BENCH_ROLE"

func main() {
	if os.Getenv(envRole) == "server" {
		os.Exit(runServer())
	}
	os.Exit(runMain(os.Args[1:]))
}

func runMain(args []string) int {
	cfg, err := parseFlags(args)
	if err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	md := res.markdown()
	if cfg.out == "-" {
		fmt.Print(md)
		return 0
	}
	if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "bench: wrote", cfg.out)
	return 0
}

// config is what the flags ask for.
type config struct {
	quick          bool
	upgrades       int   // figure 1, per implementation
	sockets        []int // figure 2
	socketUpgrades int   // figure 2, per implementation and count
	loadUpgrades   int   // figure 3, per implementation and mode
	segment        int   // upgrades per load segment
	conns          int   // load clients
	steady         int   // figure 4: steady-state seconds per implementation
	footprint      int   // figure 5, upgrades per implementation
	runUpgrades    int   // figure 6, upgrades per implementation
	strace         bool
	profile        bool
	out            string
	args           []string
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	c := &config{args: args}
	var sockets string
	fs.BoolVar(&c.quick, "quick", false, "a run of a minute or two: fewer upgrades everywhere (explicit flags still win)")
	fs.IntVar(&c.upgrades, "upgrades", 50, "`n` upgrades per implementation for upgrade-to-ready latency")
	fs.StringVar(&sockets, "sockets", "100,1000,4000", "comma-separated `counts` of inherited listening sockets")
	fs.IntVar(&c.socketUpgrades, "socket-upgrades", 50, "`n` upgrades per implementation and socket count")
	fs.IntVar(&c.loadUpgrades, "load-upgrades", 200, "`n` upgrades under load per implementation and client mode")
	fs.IntVar(&c.segment, "segment", 20, "upgrades per load segment before switching implementation")
	fs.IntVar(&c.conns, "conns", 16, "`n` concurrent load clients")
	fs.IntVar(&c.steady, "steady", 15, "`seconds` of steady-state load per implementation")
	fs.IntVar(&c.footprint, "footprint-upgrades", 1000, "`n` upgrades per implementation before comparing fds and RSS")
	fs.IntVar(&c.runUpgrades, "run-upgrades", 50, "`n` upgrades of the README program alone and under tableflip run, alternating")
	fs.BoolVar(&c.strace, "strace", true, "count the syscalls of one upgrade per implementation with strace -c -f, if strace is installed")
	fs.BoolVar(&c.profile, "profile", true, "take a CPU profile of each server under steady load and summarise it with go tool pprof, if go is installed")
	fs.StringVar(&c.out, "out", defaultOut(), "`file` to write the report to (- for standard output)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(fs.Output(), "bench: unexpected arguments:", fs.Args())
		return nil, flag.ErrHelp
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.quick {
		quick := map[string]func(){
			"upgrades":           func() { c.upgrades = 20 },
			"socket-upgrades":    func() { c.socketUpgrades = 10 },
			"load-upgrades":      func() { c.loadUpgrades = 20 },
			"segment":            func() { c.segment = 10 },
			"steady":             func() { c.steady = 3 },
			"footprint-upgrades": func() { c.footprint = 100 },
			"run-upgrades":       func() { c.runUpgrades = 20 },
		}
		for name, f := range quick {
			if !set[name] {
				f()
			}
		}
	}
	for _, s := range strings.Split(sockets, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fmt.Fprintf(fs.Output(), "bench: bad -sockets entry %q\n", s)
			return nil, flag.ErrHelp
		}
		c.sockets = append(c.sockets, n)
	}
	if c.upgrades < 1 || c.socketUpgrades < 1 || c.loadUpgrades < 1 || c.segment < 1 || c.conns < 1 || c.footprint < 1 || c.steady < 1 || c.runUpgrades < 1 {
		fmt.Fprintln(fs.Output(), "bench: counts must be at least 1")
		return nil, flag.ErrHelp
	}
	return c, nil
}

// defaultOut is BENCHMARKS.md at the repository root when run from the
// bench directory, else in the current directory.
func defaultOut() string {
	if b, err := os.ReadFile("go.mod"); err == nil && strings.Contains(string(b), "module github.com/seed589fcc9d/tableflip/bench\n") {
		return "../BENCHMARKS.md"
	}
	return "BENCHMARKS.md"
}

// command is the command line that reproduces this run.
func (c *config) command() string {
	s := "cd bench && go run ."
	for _, a := range c.args {
		s += " " + a
	}
	return s
}
