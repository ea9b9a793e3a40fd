package supervisor

import (
	"strings"
	"testing"
	"time"
)

func TestParseListen(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ListenSpec
		err  string
	}{
		{"tcp://127.0.0.1:80", ListenSpec{"unknown", "tcp", "127.0.0.1:80"}, ""},
		{"web=tcp6://[::1]:8080", ListenSpec{"web", "tcp6", "[::1]:8080"}, ""},
		{"dns=udp://:53", ListenSpec{"dns", "udp", ":53"}, ""},
		{"unix://app.sock", ListenSpec{"unknown", "unix", "/srv/app.sock"}, ""},
		{"unix://@abstract", ListenSpec{"unknown", "unix", "@abstract"}, ""},
		{"tcp://127.0.0.1:http", ListenSpec{"unknown", "tcp", "127.0.0.1:http"}, ""},
		{"127.0.0.1:80", ListenSpec{}, "want [name=]tcp://"},
		{"tcp://127.0.0.1", ListenSpec{}, "missing port"},
		{"tcp://127.0.0.1:nope", ListenSpec{}, "unknown port"},
		{"sctp://127.0.0.1:1", ListenSpec{}, `network "sctp"`},
		{"unix://", ListenSpec{}, "no path"},
		{"a:b=tcp://:1", ListenSpec{}, "not allowed"},
		{"=tcp://:1", ListenSpec{}, "empty"},
		{strings.Repeat("n", 256) + "=tcp://:1", ListenSpec{}, "longer than"},
	} {
		got, err := ParseListen(tc.in, "/srv")
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseListen(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseListen(%q): error %v, want one with %q", tc.in, err, tc.err)
		}
	}
}

func TestParseReady(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"notify", "notify", ""},
		{"tcp", "tcp", ""},
		{"tcp://127.0.0.1:9", "tcp://127.0.0.1:9", ""},
		{"http://localhost/health", "http://localhost:80/health", ""},
		{"http://127.0.0.1:8080/", "http://127.0.0.1:8080/", ""},
		{"delay=1.5s", "delay=1.5s", ""},
		{"delay=-1s", "", "want delay= and a duration"},
		{"delay=soon", "", "want delay= and a duration"},
		{"tcp://nope", "", "missing port"},
		{"https://x/", "", "want notify, tcp"},
		{"http:///path", "", "no host"},
	} {
		got, err := ParseReady(tc.in)
		switch {
		case tc.err == "" && (err != nil || got.String() != tc.want):
			t.Errorf("ParseReady(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseReady(%q): error %v, want one with %q", tc.in, err, tc.err)
		}
	}
	if r, _ := ParseReady("delay=2s"); r.Mode != ReadyDelay || r.Delay != 2*time.Second {
		t.Errorf("delay=2s: %+v", r)
	}
}
