package handover

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestEnvRoundTrip(t *testing.T) {
	e := Env{Version: Version, PID: 1234, FD: 3, Token: [TokenSize]byte{1, 2, 3}}
	got, err := ParseEnv(e.String())
	if err != nil {
		t.Fatal(err)
	}
	if got != e {
		t.Errorf("ParseEnv(%q) = %+v, want %+v", e.String(), got, e)
	}
}

func TestParseEnvErrors(t *testing.T) {
	token := strings.Repeat("ab", TokenSize)
	for _, tc := range []struct {
		value string
		want  string
		is    error
	}{
		{"", "does not start with a version", ErrMalformed},
		{"1;pid=2;fd=3", "does not start with a version", ErrMalformed},
		{"vX;pid=2;fd=3", `version "X" is not a number`, ErrMalformed},
		{"v2;pid=2", "pid and fd are required", ErrMalformed},
		{"v2;pid=abc;fd=3;token=" + token, `pid "abc" is not a number`, ErrMalformed},
		{"v2;pid=-1;fd=3;token=" + token, `pid "-1" is not a number`, ErrMalformed},
		{"v2;pid=2;fd=1;token=" + token, "fd 1 is a standard stream", ErrMalformed},
		{"v2;pid=2;fd=3;token=zz", "token is not 32 hex digits", ErrMalformed},
		{"v2;pid=2;fd=3;pid=4;token=" + token, `bad field "pid=4"`, ErrMalformed},
		{"v2;pid=2;fd=3;colour=red;token=" + token, `unknown field "colour"`, ErrMalformed},
		{"v3;pid=2;fd=3;more=1", "unsupported protocol version 3", ErrVersion},
		{"v1;pid=2;fd=3;token=" + token, "unsupported protocol version 1", ErrVersion},
	} {
		_, err := ParseEnv(tc.value)
		if err == nil || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseEnv(%q) = %v, want an error wrapping %v that says %q", tc.value, err, tc.is, tc.want)
		}
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h := Hello{Version: Version, Token: [TokenSize]byte{9}, Generation: 300, Entries: []Entry{
		{Kind: KindListener, Network: "tcp", Addr: "127.0.0.1:0", Bound: "127.0.0.1:4242"},
		{Kind: KindPacketConn, Network: "unixgram", Addr: "@abstract"},
		{Kind: KindListener, Network: "unix", Addr: "/run/app.sock", Held: true},
		{Kind: KindFile, Addr: "state"},
	}}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Hello
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Token != h.Token || got.Generation != h.Generation || len(got.Entries) != len(h.Entries) {
		t.Fatalf("round trip: got %+v, want %+v", got, h)
	}
	for i := range h.Entries {
		if got.Entries[i] != h.Entries[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got.Entries[i], h.Entries[i])
		}
	}
}

func TestHelloLive(t *testing.T) {
	base := Hello{Version: Version, Generation: 3, Entries: []Entry{{Kind: KindListener, Network: "tcp", Addr: ":0"}}}
	old, err := base.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	h := base
	h.Live = []LiveGeneration{
		{PID: 100, Generation: 1, Started: 1_700_000_000_000_000_000, Draining: 1_700_000_001_000_000_000},
		{PID: maxPID, Generation: 2, Started: -1},
	}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, old) {
		t.Fatal("the live generations are not a trailing addition to the hello")
	}
	var got Hello
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Generation != 3 || len(got.Live) != 2 || got.Live[0] != h.Live[0] || got.Live[1] != h.Live[1] {
		t.Fatalf("round trip: got %+v, want %+v", got.Live, h.Live)
	}
	// A hello without the list decodes as before, with no live
	// generations, even into a Hello that had some.
	if err := got.UnmarshalBinary(old); err != nil || got.Live != nil || got.Generation != 3 {
		t.Fatalf("hello without live generations: %v, %+v", err, got)
	}
	for _, pid := range []int{0, -1, maxPID + 1} {
		bad := base
		bad.Live = []LiveGeneration{{PID: pid}}
		if _, err := bad.MarshalBinary(); err == nil {
			t.Errorf("pid %d encoded", pid)
		}
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"truncated count", append(append([]byte{}, old...), 0x80), "count of live generations"},
		{"huge count", append(append([]byte{}, old...), 0xff, 0xff, 0x7f), "claims"},
		{"truncated", b[:len(b)-1], "truncated"},
		{"pid 0", append(append([]byte{}, old...), 1, 0, 0, 0, 0), "pid 0"},
		{"trailing", append(append([]byte{}, b...), 0), "after the live generations"},
	} {
		var h Hello
		err := h.UnmarshalBinary(tc.b)
		if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrMalformed saying %q", tc.name, err, tc.want)
		}
	}
}

func TestHelloErrors(t *testing.T) {
	good, _ := (&Hello{Version: Version, Entries: []Entry{{Kind: KindListener, Network: "tcp", Addr: "x"}}}).MarshalBinary()
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "has no version"},
		{"other version", []byte{0, 3}, "unsupported protocol version 3"},
		{"version 1", []byte{0, 1}, "unsupported protocol version 1"},
		{"no token", good[:5], "truncated in its token"},
		{"truncated entry", good[:len(good)-2], "entry 0"},
		{"truncated generation", append(append([]byte{}, good[:len(good)-1]...), 0x80), "truncated in its generation"},
		{"trailing bytes", append(append([]byte{}, good...), 0, 0), "1 bytes after the live generations"},
		{"bad kind", append(append([]byte{}, good[:19]...), 'Z', 0, 0, 0, 0), "unknown kind"},
		{"bad flags", append(append([]byte{}, good[:19]...), 'L', 0x80, 0, 0, 0), "unknown flags 0x80"},
		{"huge count", append(append([]byte{}, good[:18]...), 0xff, 0xff, 0xff, 0x7f), "claims"},
	} {
		var h Hello
		err := h.UnmarshalBinary(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error that says %q", tc.name, err, tc.want)
		}
	}
}

func TestReadFrameErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"bad magic", []byte("XXXXH\x00\x00\x00\x00"), "not \"TFLP\""},
		{"truncated header", []byte("TFL"), "header is truncated"},
		{"too large", []byte("TFLPH\xff\xff\xff\xff"), "larger than"},
		{"truncated payload", []byte("TFLPH\x00\x00\x00\x05ab"), "truncated"},
	} {
		_, _, err := ReadFrame(bytes.NewReader(tc.b))
		if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrMalformed saying %q", tc.name, err, tc.want)
		}
	}
}

// FuzzParseEnv: whatever the environment holds, ParseEnv returns an error
// or a value that formats back to itself.
func FuzzParseEnv(f *testing.F) {
	f.Add(Env{Version: Version, PID: 7, FD: 3}.String())
	f.Add("v3;pid=1;fd=3")
	f.Add("v2;pid=;fd=")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEnv(s)
		if err != nil {
			return
		}
		again, err := ParseEnv(e.String())
		if err != nil || again != e {
			t.Fatalf("ParseEnv(%q) = %+v, but its String %q parses to %+v, %v", s, e, e.String(), again, err)
		}
	})
}

// FuzzHello: the decoder never panics, and what it accepts encodes back
// to the same bytes.
func FuzzHello(f *testing.F) {
	good, _ := (&Hello{Version: Version, Entries: []Entry{
		{Kind: KindListener, Network: "tcp", Addr: "127.0.0.1:0", Bound: "127.0.0.1:1"},
		{Kind: KindFile, Addr: "f"},
	}}).MarshalBinary()
	f.Add(good)
	f.Add([]byte{0, 1})
	live, _ := (&Hello{Version: Version, Generation: 4, Entries: []Entry{{Kind: KindFile, Addr: "f"}}, Live: []LiveGeneration{
		{PID: 10, Generation: 2, Started: 1 << 60, Draining: 1<<60 + 5},
		{PID: 11, Generation: 3, Started: 1<<60 + 1},
	}}).MarshalBinary()
	f.Add(live)
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Hello
		if err := h.UnmarshalBinary(b); err != nil {
			return
		}
		again, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted hello does not encode: %v", err)
		}
		var h2 Hello
		if err := h2.UnmarshalBinary(again); err != nil || len(h2.Entries) != len(h.Entries) ||
			h2.Generation != h.Generation || !slices.Equal(h2.Live, h.Live) {
			t.Fatalf("re-encoded hello does not decode the same: %v", err)
		}
	})
}

func TestReady(t *testing.T) {
	for _, r := range []Ready{{PID: 1}, {PID: 4242, PIDFile: "/run/app.pid"}} {
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Ready
		if err := got.UnmarshalBinary(b); err != nil || got != r {
			t.Errorf("Ready %+v encodes to %q, which decodes to %+v, %v", r, b, got, err)
		}
	}
	for _, tc := range []struct {
		payload []byte
		want    string
	}{
		{[]byte{0, 0, 1}, "ready of 3 bytes has no pid"},
		{[]byte{0, 0, 0, 0, 0}, "ready from pid 0"},
		{[]byte{0, 0, 0, 1}, "truncated string length"},
		{[]byte{0, 0, 0, 1, 3, 'a', 'b', 'c'}, `PID file "abc" is not an absolute path`},
		{[]byte{0, 0, 0, 1, 0, 0}, "1 bytes after"},
	} {
		var r Ready
		err := r.UnmarshalBinary(tc.payload)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("UnmarshalBinary(%q) = %v, want an ErrMalformed saying %q", tc.payload, err, tc.want)
		}
	}
}

// FuzzReady: a ready frame decodes or is refused with an error, and what
// decodes encodes to a frame that decodes the same (varints may be
// written longer than they need).
func FuzzReady(f *testing.F) {
	good, _ := (&Ready{PID: 7, PIDFile: "/run/x.pid"}).MarshalBinary()
	f.Add(good)
	f.Add([]byte{0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Ready
		if err := r.UnmarshalBinary(b); err != nil {
			return
		}
		again, err := r.MarshalBinary()
		var r2 Ready
		if err != nil || r2.UnmarshalBinary(again) != nil || r2 != r {
			t.Fatalf("ready %q decodes to %+v, which encodes to %q (%v), which decodes to %+v", b, r, again, err, r2)
		}
	})
}

// FuzzReadFrame: any byte stream yields frames or an error, never a panic
// or an allocation beyond MaxPayload.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, FrameReady, []byte{0, 0, 0, 1, 0}))
	f.Add([]byte("TFLPX\x00\x00\x00\x02hi"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			_, payload, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(payload))
			}
		}
	})
}
