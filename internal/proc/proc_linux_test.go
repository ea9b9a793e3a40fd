//go:build linux

package proc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const middleEnv = "PROC_TEST_MIDDLE"

// TestMain runs the test binary as the middle process of
// TestSiblingStatus when middleEnv is set.
func TestMain(m *testing.M) {
	if os.Getenv(middleEnv) != "" {
		os.Exit(middle())
	}
	os.Exit(m.Run())
}

func TestChildStatus(t *testing.T) {
	for _, tc := range []struct {
		script string
		signal syscall.Signal
		want   string
	}{
		{"exit 3", 0, "exit status 3"},
		{"exit 0", 0, "exit status 0"},
		{"exec sleep 100", syscall.SIGTERM, "killed by signal terminated"},
	} {
		p, err := Start("/bin/sh", []string{"sh", "-c", tc.script}, nil, "/", []uintptr{0, 1, 2}, false)
		if err != nil {
			t.Fatal(err)
		}
		if p.Sibling() {
			t.Errorf("%q: started as a sibling without asking", tc.script)
		}
		if tc.signal != 0 {
			if err := p.Signal(tc.signal); err != nil {
				t.Fatal(err)
			}
		}
		if got := p.Status(); got.String() != tc.want || !got.Known {
			t.Errorf("%q: status %q (known %t), want %q", tc.script, got, got.Known, tc.want)
		}
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("%q: signalling a reaped process: %v, want nothing done", tc.script, err)
		}
	}
	if _, err := Start("/nonexistent", []string{"x"}, nil, "/", []uintptr{0, 1, 2}, false); err == nil || !strings.Contains(err.Error(), "/nonexistent") {
		t.Errorf("starting a missing program: %v, want an error naming it", err)
	}
}

// TestSiblingStatus: a process started as a sibling is a child of the
// starter's parent (here the test), and the starter still learns how it
// ended once that parent has reaped it.
func TestSiblingStatus(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), middleEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	var pid int
	var sibling bool
	if _, serr := fmt.Sscanf(line, "pid %d sibling %t", &pid, &sibling); serr != nil {
		t.Fatalf("middle said %q (%v), want its sibling's pid", line, err)
	}
	if !sibling {
		t.Fatalf("middle started %d as a child, want a sibling", pid)
	}
	if ppid := parentOf(t, pid); ppid != os.Getpid() {
		t.Errorf("sibling %d has parent %d, want the test, %d", pid, ppid, os.Getpid())
	}
	fmt.Fprintln(in, "terminate")
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatalf("reaping the sibling: %v", err)
	}
	line, _ = r.ReadString('\n')
	if want := "status killed by signal terminated known true\n"; line != want {
		t.Errorf("middle learnt %q, want %q", line, want)
	}
}

// middle starts a sibling, tells the test its pid, terminates it when
// told, and says how it ended.
func middle() int {
	p, err := Start("/bin/sleep", []string{"sleep", "100"}, nil, "/", []uintptr{0, 2, 2}, true)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Printf("pid %d sibling %t\n", p.PID(), p.Sibling())
	bufio.NewReader(os.Stdin).ReadString('\n')
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
	case <-time.After(time.Minute):
		fmt.Println("status not learnt within a minute")
		return 1
	}
	st := p.Status()
	fmt.Printf("status %s known %t\n", st, st.Known)
	return 0
}

func parentOf(t *testing.T, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

func TestWatchPID(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w, ok := WatchPID(cmd.Process.Pid)
	if !ok || !w.Alive() {
		t.Fatalf("a running process: watch ok %t, want alive", ok)
	}
	defer w.Close()
	cmd.Process.Kill()
	// A zombie is gone for a pidfd: no reaping needed to tell.
	for deadline := time.Now().Add(time.Minute); w.Alive(); {
		if time.Now().After(deadline) {
			t.Fatal("killed process still alive after a minute")
		}
		time.Sleep(time.Millisecond)
	}
	if !Gone(cmd.Process.Pid) {
		t.Errorf("Gone(%d) of a zombie: false, want true", cmd.Process.Pid)
	}
	cmd.Wait()
	if _, ok := WatchPID(cmd.Process.Pid); ok {
		t.Errorf("WatchPID of a reaped process: ok, want not")
	}
}
