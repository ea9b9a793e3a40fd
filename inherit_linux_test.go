//go:build linux

package tableflip

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/handover"
)

// TestSubprocessSeesNothing: a subprocess that an upgraded generation
// starts while its parent still runs inherits neither the handover
// variable nor any descriptor.
func TestSubprocessSeesNothing(t *testing.T) {
	s := startServer(t, serverConfig{})
	s.setMode("spawn")
	helper("envcheck") // the server starts it
	pid := s.upgrade()
	want := `spawned "handover-var=false inherited-sockets=0" <nil>`
	if got := s.waitEvent(pid, "spawned"); got != want {
		t.Errorf("subprocess of an upgraded generation: got %s, want %s", got, want)
	}
}

func TestSpoofedEnvironment(t *testing.T) {
	var token [handover.TokenSize]byte
	spoof := func(pid int) string {
		return "TABLEFLIP_HANDOVER=" + handover.Env{Version: handover.Version, PID: pid, FD: 3, Token: token}.String()
	}

	t.Run("another parent", func(t *testing.T) {
		// The variable names a process that is not the parent: it is
		// ignored, and this is a first start.
		s := startServer(t, serverConfig{env: []string{spoof(1)}})
		if got := s.command("hasparent"); got != "false" {
			t.Errorf("HasParent with a spoofed variable: %s, want false", got)
		}
	})

	t.Run("wrong token", func(t *testing.T) {
		// The right parent, a socket, but not the token of the parent
		// that named it: refused, with the reason sent back.
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		ours := os.NewFile(uintptr(fds[0]), "ours")
		theirs := os.NewFile(uintptr(fds[1]), "theirs")
		defer ours.Close()
		// The socket buffer holds the hello until the child reads it.
		hello, _ := (&handover.Hello{Version: handover.Version, Token: [handover.TokenSize]byte{1}}).MarshalBinary()
		ours.Write(handover.AppendFrame(nil, handover.FrameHello, hello))
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helper("server"), spoof(os.Getpid()))
		cmd.ExtraFiles = []*os.File{theirs}
		out, err := cmd.Output()
		theirs.Close()
		if err == nil {
			t.Fatalf("helper with a wrong token: exited 0, want New to fail; output %q", out)
		}
		if !strings.Contains(string(out), "new-error") || !strings.Contains(string(out), "token does not match") {
			t.Errorf("helper with a wrong token said %q, want a new-error naming the token", out)
		}
		typ, msg, err := handover.ReadFrame(ours)
		if err != nil || typ != handover.FrameError || !strings.Contains(string(msg), "token") {
			t.Errorf("parent got frame %q %q (%v), want an error frame naming the token", typ, msg, err)
		}
	})
}

// TestInheritedConnReallyCloses: closing an inherited connection ends it
// for the peer at once, not when the process exits.
func TestInheritedConnReallyCloses(t *testing.T) {
	s := startServer(t, serverConfig{})
	c, err := net.Dial("tcp", s.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "keep")
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); line != "kept\n" {
		t.Fatalf("keep: got %q %v", line, err)
	}
	pid := s.upgrade()
	// A deadline bounds a failure, it does not synchronise: the new
	// generation closes the connection as it starts.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading the inherited connection: %v (the close never reached the peer)", err)
	}
	if want := fmt.Sprintf("hello from %d\n", pid); string(rest) != want {
		t.Errorf("inherited connection said %q, want %q then end of file", rest, want)
	}
}

func init() { registerHelper("envcheck", helperEnvCheck) }

// helperEnvCheck reports what a subprocess of an upgraded generation
// inherited: the handover variable, and descriptors beyond stdio.
func helperEnvCheck() int {
	_, set := os.LookupEnv("TABLEFLIP_HANDOVER")
	sockets := 0
	names, _ := os.ReadDir("/proc/self/fd")
	for _, n := range names {
		fd, _ := strconv.Atoi(n.Name())
		target, _ := os.Readlink("/proc/self/fd/" + n.Name())
		if fd > 2 && strings.HasPrefix(target, "socket:") {
			sockets++
		}
	}
	fmt.Printf("handover-var=%t inherited-sockets=%d\n", set, sockets)
	return 0
}
