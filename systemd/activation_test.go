package systemd

import (
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// env is a fake environment for ParseListenEnv.
type env map[string]string

func (e env) lookup(k string) (string, bool) { v, ok := e[k]; return v, ok }

const self = 4242

func TestParseListenEnv(t *testing.T) {
	tests := []struct {
		name string
		env  env
		want []string
	}{
		{"nothing set", env{}, nil},
		{"no LISTEN_PID", env{"LISTEN_FDS": "2"}, nil},
		{"other process", env{"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "bad\x01:x:y"}, nil},
		{"no LISTEN_FDS", env{"LISTEN_PID": "4242"}, nil},
		{"unnamed", env{"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, []string{"unknown", "unknown"}},
		{"named", env{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:dns:"},
			[]string{"web", "dns", ""}},
		{"leading zeros", env{"LISTEN_PID": "004242", "LISTEN_FDS": "01"}, []string{"unknown"}},
		{"longest name", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": strings.Repeat("x", 255)},
			[]string{strings.Repeat("x", 255)}},
		{"printable", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a b=c~!"}, []string{"a b=c~!"}},
	}
	for _, tt := range tests {
		got, err := ParseListenEnv(tt.env.lookup, self)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

func TestParseListenEnvBad(t *testing.T) {
	huge := strconv.Itoa(MaxListenFds + 1)
	tests := []struct {
		name     string
		env      env
		variable string
		reason   string
	}{
		{"pid garbage", env{"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID", "not a decimal number"},
		{"pid empty", env{"LISTEN_PID": "", "LISTEN_FDS": "1"}, "LISTEN_PID", "not a decimal number"},
		{"pid zero", env{"LISTEN_PID": "0", "LISTEN_FDS": "1"}, "LISTEN_PID", "not a process ID"},
		{"pid negative", env{"LISTEN_PID": "-4242", "LISTEN_FDS": "1"}, "LISTEN_PID", "negative"},
		{"pid with space", env{"LISTEN_PID": " 4242", "LISTEN_FDS": "1"}, "LISTEN_PID", "not a decimal number"},
		{"fds garbage", env{"LISTEN_PID": "4242", "LISTEN_FDS": "three"}, "LISTEN_FDS", "not a decimal number"},
		{"fds plus sign", env{"LISTEN_PID": "4242", "LISTEN_FDS": "+3"}, "LISTEN_FDS", "not a decimal number"},
		{"fds float", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1.5"}, "LISTEN_FDS", "not a decimal number"},
		{"fds negative", env{"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, "LISTEN_FDS", "negative"},
		{"fds zero", env{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, "LISTEN_FDS", "at least 1"},
		{"fds huge", env{"LISTEN_PID": "4242", "LISTEN_FDS": huge}, "LISTEN_FDS", "more fds than"},
		{"fds overflow", env{"LISTEN_PID": "4242", "LISTEN_FDS": "99999999999999999999999"}, "LISTEN_FDS", "too large"},
		{"too few names", env{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES", "2 names for 3 fds"},
		{"too many names", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES", "2 names for 1 fds"},
		{"oversized names", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": strings.Repeat("x:", 1<<20)},
			"LISTEN_FDNAMES", "1048577 names for 1 fds"},
		{"name too long", env{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "ok:" + strings.Repeat("x", 256)},
			"LISTEN_FDNAMES", "fd 4: name of 256 bytes"},
		{"control byte", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "we\nb"}, "LISTEN_FDNAMES", "byte 0x0a at 2"},
		{"non-ASCII", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "wéb"}, "LISTEN_FDNAMES", "byte 0xc3 at 1"},
		{"DEL", env{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "\x7f"}, "LISTEN_FDNAMES", "byte 0x7f"},
	}
	for _, tt := range tests {
		names, err := ParseListenEnv(tt.env.lookup, self)
		var ee *EnvError
		if names != nil || !errors.As(err, &ee) || ee.Var != tt.variable {
			t.Errorf("%s: got %q, %v; want an *EnvError for %s", tt.name, names, err, tt.variable)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "systemd: "+tt.variable+"=") || !strings.Contains(msg, tt.reason) {
			t.Errorf("%s: error %q does not name %s and %q", tt.name, msg, tt.variable, tt.reason)
		}
		if len(msg) > 300 {
			t.Errorf("%s: error of %d bytes: the value is not truncated", tt.name, len(msg))
		}
	}
}

func FuzzParseListenEnv(f *testing.F) {
	f.Add("4242", "2", "web:dns", true, true, true)
	f.Add("4242", "1", "", true, true, false)
	f.Add("4242", "3", "a::", true, true, true)
	f.Add("-1", "65537", "\x00", true, true, true)
	f.Add("4242", "0001", "x", true, true, true)
	f.Add("4242", "65536", "", true, true, false)
	f.Fuzz(func(t *testing.T, pid, fds, names string, hasPID, hasFds, hasNames bool) {
		e := env{}
		if hasPID {
			e[EnvListenPID] = pid
		}
		if hasFds {
			e[EnvListenFds] = fds
		}
		if hasNames {
			e[EnvListenFdNames] = names
		}
		got, err := ParseListenEnv(e.lookup, self)
		if err != nil {
			var ee *EnvError
			if got != nil || !errors.As(err, &ee) || !strings.HasPrefix(err.Error(), "systemd: LISTEN_") {
				t.Fatalf("got %q, %v", got, err)
			}
			return
		}
		if got == nil {
			return
		}
		if !hasPID || !hasFds || pid == "" || fds == "" {
			t.Fatalf("names %q from an incomplete environment %q", got, e)
		}
		n, err := strconv.Atoi(fds)
		if err != nil || n != len(got) || n < 1 || n > MaxListenFds {
			t.Fatalf("%d names for LISTEN_FDS=%q", len(got), fds)
		}
		for _, name := range got {
			if checkFdName(name) != nil {
				t.Fatalf("invalid name %q accepted", name)
			}
		}
		if hasNames && strings.Join(got, ":") != names {
			t.Fatalf("names %q from LISTEN_FDNAMES=%q", got, names)
		}
	})
}

func TestMatches(t *testing.T) {
	tcp4 := ListenFd{Type: 1, Network: "tcp4", Listening: true,
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}}
	tcp6any := ListenFd{Type: 1, Network: "tcp6", Listening: true, Addr: &net.TCPAddr{IP: net.IPv6unspecified, Port: 80}}
	udp4 := ListenFd{Type: sockDgram, Network: "udp4", Addr: &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 53}}
	unixS := ListenFd{Type: 1, Network: "unix", Listening: true, Addr: &net.UnixAddr{Name: "/run/app.sock", Net: "unix"}}
	abstract := ListenFd{Type: sockDgram, Network: "unixgram", Addr: &net.UnixAddr{Name: "@app", Net: "unixgram"}}
	conn := tcp4
	conn.Listening = false
	broken := tcp4
	broken.Err = errors.New("closed")

	tests := []struct {
		l                ListenFd
		network, address string
		want             bool
	}{
		{tcp4, "tcp", "127.0.0.1:8080", true},
		{tcp4, "tcp4", "127.0.0.1:8080", true},
		{tcp4, "tcp6", "127.0.0.1:8080", false},
		{tcp4, "tcp", "[::ffff:127.0.0.1]:8080", true},
		{tcp4, "tcp", "127.0.0.2:8080", false},
		{tcp4, "tcp", "127.0.0.1:8081", false},
		{tcp4, "tcp", "127.0.0.1:0", false},
		{tcp4, "tcp", ":8080", false},
		{tcp4, "tcp", "localhost:8080", false},
		{tcp4, "tcp", "127.0.0.1:http-alt", false},
		{tcp4, "udp", "127.0.0.1:8080", false},
		{tcp4, "tcp", "garbage", false},
		{conn, "tcp", "127.0.0.1:8080", false},
		{broken, "tcp", "127.0.0.1:8080", false},
		{tcp6any, "tcp", ":80", true},
		{tcp6any, "tcp", "0.0.0.0:80", true},
		{tcp6any, "tcp", "[::]:80", true},
		{tcp6any, "tcp6", "[::%eth0]:80", true},
		{tcp6any, "tcp", "[::1]:80", false},
		{udp4, "udp", "10.0.0.1:53", true},
		{udp4, "udp4", "10.0.0.1:53", true},
		{udp4, "tcp", "10.0.0.1:53", false},
		{unixS, "unix", "/run/app.sock", true},
		{unixS, "unixgram", "/run/app.sock", false},
		{unixS, "unix", "/run/other.sock", false},
		{abstract, "unixgram", "@app", true},
		{abstract, "unixgram", "", false},
		{ListenFd{Name: "state"}, "tcp", ":80", false},
	}
	for _, tt := range tests {
		if got := tt.l.Matches(tt.network, tt.address); got != tt.want {
			t.Errorf("%s %v: Matches(%q, %q) = %v, want %v", tt.l.Network, tt.l.Addr, tt.network, tt.address, got, tt.want)
		}
	}
}
