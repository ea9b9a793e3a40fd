package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/supervisor"
)

// listenFlags collects repeated -listen flags.
type listenFlags struct {
	dir   string
	specs []supervisor.ListenSpec
}

// String is flag.Value's: there is no default.
func (l *listenFlags) String() string { return "" }

// Set adds one -listen.
func (l *listenFlags) Set(s string) error {
	spec, err := supervisor.ParseListen(s, l.dir)
	if err != nil {
		return err
	}
	l.specs = append(l.specs, spec)
	return nil
}

// readyFlag is -ready.
type readyFlag struct{ r supervisor.Readiness }

// String is flag.Value's.
func (r *readyFlag) String() string { return r.r.String() }

// Set parses -ready.
func (r *readyFlag) Set(s string) (err error) {
	r.r, err = supervisor.ParseReady(s)
	return err
}

// parseRunFlags parses run's command line into the supervisor's options.
func parseRunFlags(args []string, stderr io.Writer) (*supervisor.Options, error) {
	dir, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	opts := &supervisor.Options{Dir: dir}
	listen := &listenFlags{dir: dir}
	ready := &readyFlag{}
	stopSignal := "TERM"
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, runUsage)
		fs.PrintDefaults()
	}
	fs.Var(listen, "listen", "a `socket` for the program: [name=]tcp://host:port, udp://host:port or unix://path\n(repeatable; tcp4, tcp6, udp4, udp6 too): fds 3, 4, … in this order, then the\nsockets systemd passed that no -listen matches; a -listen that matches one of\nthose uses it; name goes in LISTEN_FDNAMES (default \"unknown\")")
	fs.Var(ready, "ready", "the `mode` by which a new generation shows it is ready: notify (READY=1 to NOTIFY_SOCKET), tcp\n(it accepts a connection on the first TCP socket), tcp://host:port, http://host:port/path\n(it accepts a connection there and answers GET with a status below 400) or delay=D\n(it still runs D after it was executed); a probe counts only when the new\ngeneration accepted it (default notify)")
	fs.DurationVar(&opts.UpgradeTimeout, "upgrade-timeout", time.Minute, "how long a new generation may take to be ready; then it gets -stop-signal,\nSIGKILL after min(5s, this), and the upgrade fails")
	fs.StringVar(&stopSignal, "stop-signal", stopSignal, "the `signal` that tells a generation to drain and exit")
	fs.DurationVar(&opts.DrainTimeout, "drain-timeout", 30*time.Second, "how long a generation may drain before SIGKILL (0: no bound)")
	fs.StringVar(&opts.ControlSocket, "control", "", "control socket `path` (mode 0600): tableflip upgrade and tableflip status")
	fs.StringVar(&opts.ControlGroup, "control-group", "", "a `group` whose members may use the control socket too (mode 0660)")
	fs.StringVar(&opts.PIDFile, "pidfile", "", "PID `file`, written with the supervisor's pid once the first generation is ready")
	fs.DurationVar(&opts.Backoff, "backoff", time.Second, "wait before replacing a generation that died after it was ready; doubled for\neach replacement that dies too, up to 30s")
	fs.BoolVar(&opts.Rollback, "rollback", false, "replace a release whose generation dies within -rollback-grace of being ready\nby the previous release, even if its file was replaced on disk")
	fs.DurationVar(&opts.RollbackGrace, "rollback-grace", time.Minute, "see -rollback")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	opts.Listen, opts.Ready, opts.Program = listen.specs, ready.r, fs.Args()
	sig, err := parseSignal(stopSignal)
	if err != nil {
		return nil, fmt.Errorf("-stop-signal: %v", err)
	}
	opts.StopSignal = sig
	switch {
	case len(opts.Program) == 0:
		return nil, errors.New("no program: tableflip run [flags] -- program [args…]")
	case opts.UpgradeTimeout <= 0:
		return nil, errors.New("-upgrade-timeout must be positive")
	case opts.DrainTimeout < 0, opts.Backoff < 0, opts.RollbackGrace < 0:
		return nil, errors.New("-drain-timeout, -backoff and -rollback-grace must not be negative")
	case opts.Ready.Mode == supervisor.ReadyDelay && opts.Ready.Delay >= opts.UpgradeTimeout:
		return nil, fmt.Errorf("-ready %s is not shorter than -upgrade-timeout %s: no generation would ever be ready", opts.Ready, opts.UpgradeTimeout)
	}
	for _, p := range []*string{&opts.ControlSocket, &opts.PIDFile} {
		if *p != "" && (*p)[0] != '/' {
			*p = dir + "/" + *p
		}
	}
	return opts, nil
}

// runCommand runs "run".
func runCommand(args []string, stderr io.Writer) int {
	opts, err := parseRunFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "tableflip run: %v\n", err)
		return exitUsage
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	opts.Args = os.Args
	if err := supervisor.Run(*opts); err != nil {
		fmt.Fprintf(stderr, "tableflip run: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// runStateCommand is supervisor.StateCommand: a supervisor asks whether
// this executable can take over from it (see supervisor.CheckState).
func runStateCommand(args []string, stderr io.Writer) int {
	if err := supervisor.CheckState(args); err != nil {
		fmt.Fprintf(stderr, "tableflip %s: %v\n", supervisor.StateCommand, err)
		return exitFailed
	}
	if len(args) < 2 || args[1] != "run" {
		fmt.Fprintf(stderr, "tableflip %s: want the state version and run's command line\n", supervisor.StateCommand)
		return exitUsage
	}
	if _, err := parseRunFlags(args[2:], io.Discard); err != nil {
		fmt.Fprintf(stderr, "tableflip %s: the command line: %v\n", supervisor.StateCommand, err)
		return exitUsage
	}
	return exitOK
}

// zygoteCommand is supervisor.ZygoteCommand: the process that becomes a
// generation of the program (see supervisor.Zygote).
func zygoteCommand(args []string, _ io.Writer) int { return supervisor.Zygote(args) }
