package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/systemd"
)

// Options configure a supervisor (Run). The command line of tableflip run
// fills them in; its documentation describes each.
type Options struct {
	// Program is the program and its arguments. Program[0] is looked up
	// in $PATH if it has no slash, and taken from Dir if relative; it is
	// looked up again at every upgrade, so that a deploy that replaces
	// the file starts the new version.
	Program []string
	// Dir is the working directory of the program and of the relative
	// paths here; "" is the supervisor's.
	Dir string
	// Listen are the sockets the program gets besides those systemd
	// passes (see Run).
	Listen []ListenSpec
	// Ready says how a new generation shows that it is ready.
	Ready Readiness
	// UpgradeTimeout bounds a new generation's start, until it is ready.
	UpgradeTimeout time.Duration
	// DrainTimeout bounds an old generation's drain: then it gets
	// SIGKILL. Zero means no bound.
	DrainTimeout time.Duration
	// StopSignal is sent to a generation that is to drain and exit.
	StopSignal syscall.Signal
	// ControlSocket, if not empty, is the path of the control socket;
	// ControlGroup a group let in besides the supervisor's uid and root.
	ControlSocket string
	ControlGroup  string
	// PIDFile, if not empty, is written with the supervisor's pid once
	// the first generation is ready, and removed at the end.
	PIDFile string
	// Rollback replaces a release whose generation dies within
	// RollbackGrace of being ready by the release that served before.
	Rollback      bool
	RollbackGrace time.Duration
	// Backoff is how long the supervisor waits before it replaces a
	// generation that died after it was ready; it doubles with each
	// replacement that dies too, up to MaxBackoff.
	Backoff time.Duration
	// Logger receives what the supervisor does. Nil means silent.
	Logger *slog.Logger
	// Args are the supervisor's own command line (os.Args), with which
	// it re-executes itself when its executable file changes.
	Args []string
}

// MaxBackoff bounds the delay before a generation that died is replaced.
// A generation that served longer than this before it died starts the
// doubling again from Options.Backoff.
const MaxBackoff = 30 * time.Second

// ZygoteCommand is the hidden subcommand of the program that runs the
// supervisor (tableflip) by which it starts the process that becomes the
// next generation (see the package documentation): that program's main
// must call Zygote when its first argument is ZygoteCommand.
const ZygoteCommand = "run-exec"

// StateCommand is the hidden subcommand by which a supervisor asks a
// replaced executable of its own, before it re-executes it, whether it
// reads the state it would hand over: that program's main must call
// CheckState when its first argument is StateCommand.
const StateCommand = "run-state"

// ListenSpec is one -listen socket: the program gets it as fd 3+i, named
// Name in LISTEN_FDNAMES.
type ListenSpec struct {
	Name    string // in LISTEN_FDNAMES
	Network string // tcp, tcp4, tcp6, udp, udp4, udp6 or unix
	Addr    string // host:port, or the socket's path (@name: abstract)
}

// String is the spec as -listen takes it.
func (l ListenSpec) String() string {
	s := l.Network + "://" + l.Addr
	if l.Name != "" {
		s = l.Name + "=" + s
	}
	return s
}

// ParseListen parses "[name=]tcp://host:port", "udp://host:port" or
// "unix://path" (tcp4, tcp6, udp4 and udp6 too). A relative path is
// taken from dir. name follows the rules of systemd's
// FileDescriptorName=; without it the socket is named "unknown", as
// sd_listen_fds_with_names(3) names an fd that systemd passed unnamed.
func ParseListen(s, dir string) (ListenSpec, error) {
	var l ListenSpec
	rest := s
	if name, after, ok := strings.Cut(s, "="); ok && !strings.Contains(name, "://") {
		l.Name, rest = name, after
		if err := checkFdName(name); err != nil {
			return l, fmt.Errorf("%q: name %q: %v", s, name, err)
		}
	}
	network, addr, ok := strings.Cut(rest, "://")
	if !ok {
		return l, fmt.Errorf("%q: want [name=]tcp://host:port, udp://host:port or unix://path", s)
	}
	l.Network, l.Addr = network, addr
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return l, fmt.Errorf("%q: %v", s, err)
		}
		if port == "" {
			return l, fmt.Errorf("%q: no port", s)
		}
		if _, err := net.LookupPort(network, port); err != nil {
			return l, fmt.Errorf("%q: %v", s, err)
		}
		_ = host
	case "unix":
		if addr == "" || addr == "@" {
			return l, fmt.Errorf("%q: no path", s)
		}
		if !strings.HasPrefix(addr, "@") && !filepath.IsAbs(addr) {
			l.Addr = filepath.Join(dir, addr)
		}
	default:
		return l, fmt.Errorf("%q: network %q: want tcp, tcp4, tcp6, udp, udp4, udp6 or unix", s, network)
	}
	if l.Name == "" {
		l.Name = systemd.UnknownFdName
	}
	return l, nil
}

// checkFdName applies systemd's rules for FileDescriptorName= (see
// systemd.FdName).
func checkFdName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > systemd.MaxFdNameLen:
		return fmt.Errorf("longer than %d bytes", systemd.MaxFdNameLen)
	}
	for _, c := range []byte(name) {
		if c < ' ' || c >= 127 || c == ':' {
			return fmt.Errorf("byte %q is not allowed (printable ASCII but ':' only)", c)
		}
	}
	return nil
}

// ReadyMode is how a new generation shows that it is ready.
type ReadyMode int

// Ready modes.
const (
	// ReadyNotify: the generation sends READY=1 to NOTIFY_SOCKET.
	ReadyNotify ReadyMode = iota
	// ReadyTCP: the generation accepts a connection on a TCP socket.
	ReadyTCP
	// ReadyHTTP: the generation accepts a connection to a URL and
	// answers a GET with a status below 400.
	ReadyHTTP
	// ReadyDelay: the generation is still running after a delay.
	ReadyDelay
)

// Readiness is a parsed -ready value.
type Readiness struct {
	Mode ReadyMode
	// Addr is the host:port that ReadyTCP connects to; "" is the first
	// TCP socket the program gets.
	Addr string
	// URL is what ReadyHTTP asks for.
	URL *url.URL
	// Delay is ReadyDelay's.
	Delay time.Duration
}

// String is the readiness as -ready takes it.
func (r Readiness) String() string {
	switch r.Mode {
	case ReadyTCP:
		if r.Addr != "" {
			return "tcp://" + r.Addr
		}
		return "tcp"
	case ReadyHTTP:
		return r.URL.String()
	case ReadyDelay:
		return "delay=" + r.Delay.String()
	}
	return "notify"
}

// ParseReady parses "notify", "tcp", "tcp://host:port",
// "http://host:port/path" or "delay=D".
func ParseReady(s string) (Readiness, error) {
	switch {
	case s == "notify":
		return Readiness{Mode: ReadyNotify}, nil
	case s == "tcp":
		return Readiness{Mode: ReadyTCP}, nil
	case strings.HasPrefix(s, "tcp://"):
		addr := strings.TrimPrefix(s, "tcp://")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return Readiness{}, fmt.Errorf("%q: %v", s, err)
		}
		return Readiness{Mode: ReadyTCP, Addr: addr}, nil
	case strings.HasPrefix(s, "http://"):
		u, err := url.Parse(s)
		if err != nil {
			return Readiness{}, fmt.Errorf("%q: %v", s, err)
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), "80")
		}
		if u.Hostname() == "" {
			return Readiness{}, fmt.Errorf("%q: no host", s)
		}
		return Readiness{Mode: ReadyHTTP, URL: u}, nil
	case strings.HasPrefix(s, "delay="):
		d, err := time.ParseDuration(strings.TrimPrefix(s, "delay="))
		if err != nil || d < 0 {
			return Readiness{}, fmt.Errorf("%q: want delay= and a duration such as 2s", s)
		}
		return Readiness{Mode: ReadyDelay, Delay: d}, nil
	}
	return Readiness{}, fmt.Errorf("%q: want notify, tcp, tcp://host:port, http://host:port/path or delay=D", s)
}
