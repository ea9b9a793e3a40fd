package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// checkConfig is the parsed command line of check.
type checkConfig struct {
	server         []string // the user's server; nil for the sample server
	pidFile        string
	url            string
	signal         string
	control        string // control socket that upgrades, instead of signal
	upgrades       int
	duration       time.Duration
	interval       time.Duration
	modes          []loadgen.Mode
	conns          int
	method         string
	body           []byte
	startTimeout   time.Duration
	upgradeTimeout time.Duration
	exitTimeout    time.Duration
	maxRequests    int
	timeout        time.Duration // per request
	pace           time.Duration // between the exchanges of a long-lived connection
	fdSlack        int
	logFile        string // keeps the server's output; empty: a temporary file
	jsonOut        bool
	htmlFile       string
}

// checkError is a failure that ends the check before a verdict, with the
// exit status it calls for.
type checkError struct {
	code int
	msg  string
}

func (e *checkError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &checkError{code: exitUsage, msg: fmt.Sprintf(format, args...)}
}

func serverErrorf(format string, args ...any) error {
	return &checkError{code: exitServer, msg: fmt.Sprintf(format, args...)}
}

const checkUsage = `usage: tableflip check [flags] [-- server args…]

Starts a server, puts it under load on loopback, upgrades it a number of
times and reports what the clients saw. With no server named it checks the
built-in sample server; a server of your own must upgrade on a signal
(-signal) or through its control socket (-control), and write the PID of
its ready generation to a file (-pidfile), and -url must name a loopback
address it serves:

  http://host:port/path, https://…  HTTP requests (-mode keepalive, newconn,
                                    goclient, h2; grpc for unary gRPC calls
                                    to the method the path names)
  tcp://host:port                   a line protocol: each exchange sends a
                                    line and reads the same line back, on a
                                    new connection (-mode line) or on
                                    connections held open across upgrades
                                    (-mode longlived, one line every -pace)
  udp://host:port                   datagrams: each exchange sends one and
                                    reads the same datagram back (-mode
                                    datagram); one not answered within
                                    -timeout is lost

A long-lived connection that a draining generation closes, at its drain
deadline or before, is reported as cut, not as a failure; one that the
server closes outside an upgrade is a failure.

The fd verdict compares the first and the last generation's open fds,
without their connections (TCP sockets other than listeners, and
connected UDP sockets), which come and go with clients, whether the
server accepted or opened them; -fd-slack allows for other fds that a
server legitimately opens as it runs.

Exit status: 0 nothing lost and nothing leaked; 1 requests lost or
processes, fds leaked; 2 bad usage; 3 the server could not be checked
(it did not start, did not answer, or an upgrade failed: a new generation
that exits before it is ready is reported as it happens, heard of from
the kernel's process events on Linux, which need CAP_NET_ADMIN, or else
looked for every millisecond, which can miss one that lives a few);
130 interrupted.

flags:
`

func parseCheckFlags(args []string, stderr io.Writer) (*checkConfig, error) {
	cfg := &checkConfig{}
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, checkUsage)
		fs.PrintDefaults()
	}
	fs.IntVar(&cfg.upgrades, "upgrades", 10, "number of upgrades")
	fs.DurationVar(&cfg.duration, "duration", 0, "keep upgrading for this long instead of a number of upgrades")
	fs.DurationVar(&cfg.interval, "interval", 300*time.Millisecond, "steady-state load before the first upgrade, between upgrades and after the last")
	modes := fs.String("mode", "", "client `modes`, comma-separated (see above; default keepalive,newconn,goclient,h2\nfor the sample server and https URLs, keepalive,newconn,goclient for http URLs,\nline for tcp URLs, datagram for udp URLs)")
	fs.IntVar(&cfg.conns, "c", 4, "concurrent connections per mode")
	fs.StringVar(&cfg.method, "method", "", "HTTP request method (default GET, or POST with -body)")
	body := fs.String("body", "", "request body; with tcp and udp URLs, what each line or datagram begins with\n(default \""+loadgen.DefaultLine+"\"); with -mode grpc, the serialized request message (default empty)")
	fs.StringVar(&cfg.url, "url", "", "loopback `URL` to load (required with a server of your own)")
	fs.StringVar(&cfg.pidFile, "pidfile", "", "PID `file` the server writes when a generation is ready (required with a server of your own)")
	fs.StringVar(&cfg.signal, "signal", "HUP", "signal that makes the server upgrade")
	fs.StringVar(&cfg.control, "control", "", "upgrade through the control socket at `path` (tableflip.Options.ControlSocket)\ninstead of -signal; the sample server is started with it")
	fs.DurationVar(&cfg.startTimeout, "start-timeout", 10*time.Second, "how long the first generation may take to write its PID file and answer")
	fs.DurationVar(&cfg.upgradeTimeout, "upgrade-timeout", 10*time.Second, "how long an upgrade may take, from the signal to a new ready generation")
	fs.DurationVar(&cfg.exitTimeout, "exit-timeout", 10*time.Second, "how long an old generation may take to exit once its successor is ready")
	fs.DurationVar(&cfg.timeout, "timeout", loadgen.DefaultTimeout, "how long a request may take before it fails (a datagram: is lost)")
	fs.DurationVar(&cfg.pace, "pace", loadgen.DefaultPace, "pause between two exchanges on a long-lived connection (-mode longlived)")
	fs.IntVar(&cfg.maxRequests, "max-requests", loadgen.DefaultMaxRequests, "stop the load after this many requests")
	fs.IntVar(&cfg.fdSlack, "fd-slack", 0, "`fds` other than connections that the last generation may hold beyond the first's")
	fs.StringVar(&cfg.logFile, "log", "", "keep the server's output (stdout and stderr, every generation's) in `file`;\nwithout it, it goes to a temporary file, whose end is shown if the server fails")
	fs.BoolVar(&cfg.jsonOut, "json", false, "print the report as JSON")
	fs.StringVar(&cfg.htmlFile, "html", "", "also write a self-contained HTML report with a timeline to `file`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageErrorf("%v", err)
	}
	if fs.NArg() > 0 {
		cfg.server = fs.Args()
	}
	cfg.body = []byte(*body)
	for _, p := range []*string{&cfg.control, &cfg.logFile} {
		if *p == "" {
			continue
		}
		var err error
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, usageErrorf("%v", err)
		}
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if explicit["duration"] && !explicit["upgrades"] {
		cfg.upgrades = 0 // as many as fit
	}

	switch {
	case cfg.upgrades < 0, cfg.duration < 0, cfg.interval < 0:
		return nil, usageErrorf("-upgrades, -duration and -interval must not be negative")
	case cfg.upgrades == 0 && cfg.duration == 0:
		return nil, usageErrorf("nothing to do: -upgrades 0 and no -duration")
	case cfg.conns <= 0:
		return nil, usageErrorf("-c must be at least 1")
	case cfg.fdSlack < 0:
		return nil, usageErrorf("-fd-slack must not be negative")
	case cfg.startTimeout <= 0, cfg.upgradeTimeout <= 0, cfg.exitTimeout <= 0, cfg.timeout <= 0, cfg.pace <= 0:
		return nil, usageErrorf("timeouts and -pace must be positive")
	}
	scheme := "https" // the sample server's
	if len(cfg.server) == 0 {
		if cfg.url != "" || cfg.pidFile != "" {
			return nil, usageErrorf("-url and -pidfile are for a server of your own, named after --")
		}
	} else {
		if cfg.url == "" || cfg.pidFile == "" {
			return nil, usageErrorf("checking %s needs -url (where it serves) and -pidfile (where it writes the PID of its ready generation)", cfg.server[0])
		}
		u, err := url.Parse(cfg.url)
		if err != nil || loadgen.ModesFor(u.Scheme) == nil {
			return nil, usageErrorf("-url %q: want http://, https://, tcp:// or udp://host:port", cfg.url)
		}
		scheme = u.Scheme
	}
	if *modes == "" {
		switch scheme {
		case "tcp":
			cfg.modes = []loadgen.Mode{loadgen.ModeLine}
		case "udp":
			cfg.modes = []loadgen.Mode{loadgen.ModeDatagram}
		default:
			cfg.modes = []loadgen.Mode{loadgen.ModeKeepAlive, loadgen.ModeNewConn, loadgen.ModeGoClient}
			if scheme == "https" {
				cfg.modes = append(cfg.modes, loadgen.ModeHTTP2)
			}
		}
	} else {
		for _, s := range strings.Split(*modes, ",") {
			m, err := loadgen.ParseMode(strings.TrimSpace(s))
			if err != nil {
				return nil, usageErrorf("-mode: %v", strings.TrimPrefix(err.Error(), "loadgen: "))
			}
			if m == loadgen.ModeHTTP2 && scheme != "https" {
				return nil, usageErrorf("-mode h2 needs an https -url")
			}
			if !slices.Contains(loadgen.ModesFor(scheme), m) {
				return nil, usageErrorf("-mode %s is not for a %s URL (see tableflip check -h)", m, scheme)
			}
			cfg.modes = append(cfg.modes, m)
		}
	}
	if scheme == "tcp" || scheme == "udp" {
		if cfg.method != "" {
			return nil, usageErrorf("-method is for HTTP; a %s -url has no method", scheme)
		}
	} else if cfg.method == "" {
		cfg.method = "GET"
		if len(cfg.body) > 0 {
			cfg.method = "POST"
		}
	}
	if cfg.server != nil {
		for _, m := range cfg.modes {
			o := loadgen.Options{URL: cfg.url, Mode: m, Body: cfg.body, Method: cfg.method}
			if m == loadgen.ModeGRPC {
				o.Method = ""
			}
			if err := o.Validate(); err != nil {
				return nil, usageErrorf("-url: %v", strings.TrimPrefix(err.Error(), "loadgen: "))
			}
		}
	}
	return cfg, nil
}

func checkCommand(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseCheckFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "tableflip check: %v\n", err)
		return exitUsage
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs, stop := interrupts()
	defer stop()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	prog := newProgress(stderr)
	rep, err := runCheck(ctx, cfg, prog)
	prog.finish()
	code := exitOK
	if rep != nil {
		if cfg.jsonOut {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(rep)
		} else {
			rep.writeText(stdout)
		}
		if cfg.htmlFile != "" {
			if herr := writeHTMLFile(cfg.htmlFile, rep); herr != nil {
				fmt.Fprintf(stderr, "tableflip check: %v\n", herr)
			}
		}
		if !rep.Pass {
			code = exitFailed
		}
	}
	var ce *checkError
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "tableflip check: interrupted; the server and everything it started were stopped")
		code = exitInterrupted
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "tableflip check: %v\n", err)
		code = ce.code
	default:
		fmt.Fprintf(stderr, "tableflip check: %v\n", err)
		code = exitServer
	}
	return code
}

// readPIDFile returns the PID in path, or ok == false while the file is
// missing, empty or being written.
func readPIDFile(path string) (pid int, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	_, err = fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &pid)
	return pid, err == nil && pid > 0
}

// interrupts returns a channel that receives Ctrl-C and SIGTERM, and a
// function that stops the delivery.
func interrupts() (<-chan os.Signal, func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	return c, func() { signal.Stop(c) }
}
