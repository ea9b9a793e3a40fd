package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/seed589fcc9d/tableflip"
)

const upgradeUsage = `usage: tableflip upgrade -socket PATH [-timeout D] [-json]

Asks the server whose control socket (tableflip.Options.ControlSocket) is
at PATH to upgrade, waits for the outcome and prints it: the new
generation's pid and how long it took, or why the upgrade failed.

Exit status: 0 upgraded; 1 the upgrade failed or was refused (the reason
is printed); 2 bad usage; 3 no answer from the socket.

flags:
`

const statusUsage = `usage: tableflip status -socket PATH [-timeout D] [-json]

Prints the state of the server whose control socket is at PATH: its pid,
generation, parent, readiness and upgrade counters.

Exit status: 0 answered; 1 the server refused; 2 bad usage; 3 no answer.

flags:
`

type controlConfig struct {
	socket  string
	timeout time.Duration
	jsonOut bool
}

func parseControlFlags(name, usage string, timeout time.Duration, args []string, stderr io.Writer) (*controlConfig, error) {
	cfg := &controlConfig{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.socket, "socket", "", "`path` of the server's control socket (required)")
	fs.DurationVar(&cfg.timeout, "timeout", timeout, "give up waiting for the answer after this long (0: never)")
	fs.BoolVar(&cfg.jsonOut, "json", false, "print the answer as JSON")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	case cfg.socket == "":
		return nil, errors.New("-socket is required")
	case cfg.timeout < 0:
		return nil, errors.New("-timeout must not be negative")
	}
	return cfg, nil
}

// controlCommand runs "upgrade" or "status".
func controlCommand(cmd string, args []string, stdout, stderr io.Writer) int {
	usage, timeout := statusUsage, 10*time.Second
	if cmd == tableflip.ControlUpgrade {
		// The server's own deadline for a new generation is a minute by
		// default, and it may take a few seconds more to stop one.
		usage, timeout = upgradeUsage, 2*time.Minute
	}
	cfg, err := parseControlFlags(cmd, usage, timeout, args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "tableflip %s: %v\n", cmd, err)
		return exitUsage
	}
	ctx := context.Background()
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	sigs, stop := interrupts()
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	resp, err := tableflip.ControlCall(ctx, cfg.socket, cmd)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(stderr, "tableflip %s: no answer from %s within %s (-timeout)", cmd, cfg.socket, cfg.timeout)
		if cmd == tableflip.ControlUpgrade {
			fmt.Fprint(stderr, "; the upgrade may still be running: see tableflip status")
		}
		fmt.Fprintln(stderr)
		return exitServer
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(stderr, "tableflip %s: interrupted\n", cmd)
		return exitInterrupted
	case err != nil:
		fmt.Fprintf(stderr, "tableflip %s: %v\n", cmd, err)
		return exitServer
	}
	if cfg.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(resp)
	}
	if !resp.OK {
		fmt.Fprintf(stderr, "tableflip %s: %s\n", cmd, describeControlError(resp.Error))
		if resp.Error != nil && resp.Error.Reason == tableflip.ReasonTooMany {
			// The refusal does not say how many; the status does.
			if st, err := tableflip.ControlCall(ctx, cfg.socket, tableflip.ControlStatus); err == nil && st.OK && st.Status != nil {
				fmt.Fprintf(stderr, "  alive now: %s\n", describeGenerations(st.Status))
			}
		}
		return exitFailed
	}
	if cfg.jsonOut {
		return exitOK
	}
	switch {
	case resp.Upgrade != nil:
		u := resp.Upgrade
		fmt.Fprintf(stdout, "upgraded: generation %d (pid %d) is ready, in %s\n",
			u.Generation, u.PID, fmtDur(time.Duration(u.Seconds*float64(time.Second))))
	case resp.Status != nil:
		writeStatus(stdout, resp.Status, time.Now())
	}
	return exitOK
}

// describeGenerations lists the live generations of st, oldest first.
func describeGenerations(st *tableflip.Stats) string {
	var gens []string
	for _, g := range st.Generations {
		role := "serving"
		if !g.DrainingSince.IsZero() {
			role = "draining"
		}
		gens = append(gens, fmt.Sprintf("generation %d (pid %d, %s)", g.Generation, g.PID, role))
	}
	return plural(len(gens), "generation", "generations") + ": " + strings.Join(gens, ", ")
}

// fmtAge says how old something is, to the second from a second on:
// "350ms", "42s", "3m05s", "2h07m", "3d04h".
func fmtAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s" // clocks of two processes
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// describeControlError says what went wrong, for people.
func describeControlError(e *tableflip.ControlError) string {
	var what string
	switch e.Reason {
	case tableflip.ReasonNotReady:
		what = "refused: the server has not called Ready yet"
	case tableflip.ReasonInProgress:
		what = "refused: another upgrade is running"
	case tableflip.ReasonParentRunning:
		what = "refused: the previous generation has not exited yet; ask again once it has drained," +
			" or let upgrades overlap a drain (tableflip.Options.MaxGenerations above 1) and bound drains (Options.DrainTimeout)"
	case tableflip.ReasonStopped:
		what = "refused: the server is stopping"
	case tableflip.ReasonUpgraded:
		what = "refused: this generation was just replaced; ask again"
	case tableflip.ReasonTooMany:
		what = "refused: as many generations as tableflip.Options.MaxGenerations allows are alive; ask again once one has drained" +
			" (Options.DrainTimeout bounds how long that takes)"
	case tableflip.ReasonNotSupported:
		what = "not supported on the server's platform"
	case tableflip.ReasonTimeout:
		what = "failed: the new generation did not become ready in time"
	case tableflip.ReasonChildExited:
		what = "failed: the new generation exited before it was ready"
	case tableflip.ReasonHandover:
		what = "failed: the handover to the new generation failed"
	case tableflip.ReasonPermission:
		what = "refused: permission denied"
	case tableflip.ReasonBadRequest:
		what = "the server did not understand the request"
	default:
		what = "failed"
	}
	if e.PID != 0 {
		what += fmt.Sprintf(" (pid %d", e.PID)
		switch {
		case e.Signal != "":
			what += ", killed by " + e.Signal
		case e.ExitCode != nil:
			what += fmt.Sprintf(", exit status %d", *e.ExitCode)
		}
		what += ")"
	}
	return fmt.Sprintf("%s [%s]\n  %s", what, e.Reason, e.Message)
}

func writeStatus(w io.Writer, st *tableflip.Stats, now time.Time) {
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(w, "pid           %d\n", st.PID)
	fmt.Fprintf(w, "generation    %d\n", st.Generation)
	if st.ParentPID != 0 {
		state := "exited"
		for _, p := range st.Draining {
			if p == st.ParentPID {
				state = "still running, draining"
			}
		}
		fmt.Fprintf(w, "parent pid    %d (%s)\n", st.ParentPID, state)
	}
	fmt.Fprintf(w, "started       %s (%s ago)\n", st.Started.Format(time.RFC3339), fmtAge(now.Sub(st.Started)))
	fmt.Fprintf(w, "ready         %s\n", yes(st.Ready))
	if st.Upgrading {
		fmt.Fprintln(w, "upgrading     yes")
	}
	if st.Exiting {
		fmt.Fprintln(w, "exiting       yes")
	}
	fmt.Fprintf(w, "upgrades      %d attempted, %d succeeded, %d failed\n", st.UpgradesAttempted, st.UpgradesSucceeded, st.UpgradesFailed)
	if f := st.LastFailure; f != nil {
		fmt.Fprintf(w, "last failure  %s: %s\n", st.LastFailureAt.Format(time.RFC3339), strings.ReplaceAll(describeControlError(f), "\n  ", "\n              "))
	}
	// One generation alone is this process, unless a supervisor
	// (tableflip run) answers for the program's.
	if len(st.Generations) > 1 || len(st.Generations) == 1 && st.Generations[0].PID != st.PID {
		fmt.Fprintln(w, "generations   (oldest first)")
		for _, g := range st.Generations {
			conns := "conns ?"
			if g.Conns >= 0 {
				conns = fmt.Sprintf("%d conns", g.Conns)
			}
			role := "serving"
			if !g.DrainingSince.IsZero() {
				role = "draining for " + fmtAge(now.Sub(g.DrainingSince))
			}
			fmt.Fprintf(w, "  pid %-8d generation %-4d age %-8s %-10s %s\n", g.PID, g.Generation, fmtAge(time.Duration(g.AgeSeconds*float64(time.Second))), conns, role)
		}
	}
}
