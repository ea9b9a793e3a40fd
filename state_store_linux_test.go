//go:build linux

package tableflip

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/memfd"
	"github.com/seed589fcc9d/tableflip/systemd"
	"golang.org/x/sys/unix"
)

// sdStateEnv names a file: the sdserver helper's WriteState writes its
// content, and a start that gets state writes it to the file + ".read".
const sdStateEnv = "TABLEFLIP_TEST_SDSTATE"

func sdWriteState() func(io.Writer) error {
	p := os.Getenv(sdStateEnv)
	if p == "" {
		return nil
	}
	return func(w io.Writer) error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
}

// sdReadState reads the state, if the helper deals in state, and says
// "state none", "state read <n>" or "state-error <error>".
func sdReadState(upg *Upgrader, say func(string, ...any)) {
	p := os.Getenv(sdStateEnv)
	if p == "" {
		return
	}
	r, err := upg.State()
	if errors.Is(err, ErrNoState) {
		say("state none")
		return
	}
	var b []byte
	if err == nil {
		b, err = io.ReadAll(r)
	}
	if err == nil {
		err = os.WriteFile(p+".read", b, 0o600)
	}
	if err != nil {
		say("state-error %v", err)
		return
	}
	say("state read %d", len(b))
}

// TestSystemdStateInFdStore stops a generation with FdStore and
// WriteState, takes the memfd it stores, and hands it back with the
// sockets to a new start, which reads the state exactly and removes it
// from the store once ready.
func TestSystemdStateInFdStore(t *testing.T) {
	sd := listenNotify(t)
	dir := t.TempDir()
	statePath := dir + "/state"
	want := bytes.Repeat([]byte("state\x00\xff"), 300<<10) // more than one chunk
	if err := os.WriteFile(statePath, want, 0o600); err != nil {
		t.Fatal(err)
	}
	env := sdEnv(dir, "NOTIFY_SOCKET="+sd.addr, fdStoreEnv+"=1", sdStateEnv+"="+statePath)
	s, _ := startSD(t, helperCmd(env...), dir, true)
	p1 := s.pid
	if got := s.waitEvent(p1, "state"); got != "state none" {
		t.Fatalf("first start: state %q, want none", got)
	}
	var store fakeStore
	sd.expect(p1, q(fmt.Sprintf("READY=1\nSTATUS=Serving (pid %d)", p1)))
	for range 2 {
		m, _ := sd.expect(p1, q("FDSTORE=1\nFDNAME=tableflip.")+"[LP]\\..*")
		store.apply(t, m)
	}

	if got := s.command("stop"); got != "stopped" {
		t.Fatalf("stop: %q", got)
	}
	m, _ := sd.expect(p1, q("FDSTORE=1\nFDNAME="+stateStoreName))
	if len(m.files) != 1 {
		t.Fatalf("state: %d fds, want 1", len(m.files))
	}
	if _, err := unix.GetsockoptInt(int(m.files[0].Fd()), unix.SOL_SOCKET, unix.SO_TYPE); err != unix.ENOTSOCK {
		t.Errorf("stored state is a socket (%v)", err)
	}
	store.apply(t, m)
	sd.expect(p1, q(fmt.Sprintf("STOPPING=1\nSTATUS=Stopping (pid %d)", p1)))
	s.waitEvent(p1, "exiting")
	s.reap(p1)
	s.pid = 0
	sd.none()

	// The restart: systemd hands back the store.
	var files []*os.File
	for _, name := range store.names {
		files = append(files, store.fds[name]...)
	}
	names := strings.Join(store.names, ":")
	if err := os.Remove(statePath); err != nil { // state comes from the store only
		t.Fatal(err)
	}
	s2, _ := startSD(t, activatedCmd(files, &names, env...), dir, true)
	p2 := s2.pid
	if s2.tcp != s.tcp {
		t.Errorf("restart listens on %s, want the stored %s", s2.tcp, s.tcp)
	}
	if got := s2.waitEvent(p2, "state"); got != fmt.Sprintf("state read %d", len(want)) {
		t.Fatalf("restart: state %q, want read %d", got, len(want))
	}
	if got, err := os.ReadFile(statePath + ".read"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("restart read %d bytes (%v), want the %d stored", len(got), err, len(want))
	}
	sd.expect(p2, q(fmt.Sprintf("READY=1\nSTATUS=Serving (pid %d)", p2)))
	m, _ = sd.expect(p2, q("FDSTOREREMOVE=1\nFDNAME="+stateStoreName))
	store.apply(t, m)
	for range 2 {
		m, _ := sd.expect(p2, q("FDSTORE=1\nFDNAME=tableflip.")+"[LP]\\..*")
		store.apply(t, m)
	}
	if _, ok := store.fds[stateStoreName]; ok || len(store.names) != 2 {
		t.Errorf("store holds %q after the restart was ready, want the two sockets", store.names)
	}

	// The writer now fails (its file is gone): nothing is stored.
	if got := s2.command("stop"); got != "stopped" {
		t.Fatalf("stop: %q", got)
	}
	sd.expect(p2, q(fmt.Sprintf("STOPPING=1\nSTATUS=Stopping (pid %d)", p2)))
	s2.waitEvent(p2, "exiting")
	s2.reap(p2)
	s2.pid = 0
	sd.none()
}

// TestStoredStateTruncated checks that a memfd holding half a state
// stream, as systemd would hand back, reads as an error, never as short
// state; and that complete and aborted streams read as they should.
func TestStoredStateTruncated(t *testing.T) {
	want := bytes.Repeat([]byte{1, 2, 3, 4, 5}, 1<<18)
	var stream bytes.Buffer
	w := handover.NewStateWriter(&stream)
	w.Write(want)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var aborted bytes.Buffer
	w = handover.NewStateWriter(&aborted)
	w.Write(want[:100])
	w.Abort(errors.New("disk on fire"))

	read := func(content []byte) ([]byte, error) {
		t.Helper()
		f, err := memfd.Create(stateStoreName)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(content); err != nil {
			t.Fatal(err)
		}
		// The shared offset is left at the end: the reader starts at 0
		// all the same.
		a := activation{fds: []systemd.ListenFd{
			{Fd: 3, Name: "tableflip.L.tcp.127.0.0.1%3A0"},
			{Fd: int(f.Fd()), Name: stateStoreName, File: f},
		}}
		s := a.takeState()
		if s == nil || len(a.fds) != 1 || a.fds[0].Name == stateStoreName {
			t.Fatalf("state not taken: %v, left %v", s, a.fds)
		}
		defer s.file.Close()
		return io.ReadAll(s)
	}

	if got, err := read(stream.Bytes()); err != nil || !bytes.Equal(got, want) {
		t.Errorf("complete state: %d bytes, %v; want %d", len(got), err, len(want))
	}
	for _, n := range []int{0, 2, 4 + 100, stream.Len() / 2, stream.Len() - 4} {
		if _, err := read(stream.Bytes()[:n]); !errors.Is(err, handover.ErrStateTruncated) {
			t.Errorf("state cut to %d of %d bytes: %v, want ErrStateTruncated", n, stream.Len(), err)
		}
	}
	if _, err := read(aborted.Bytes()); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("aborted state: %v, want the writer's error", err)
	}
}
