// Package checktest upgrades an example program under load with
// "tableflip check", for the examples' tests: it builds the program and
// the tableflip command, runs the check, and returns its report.
package checktest

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Report is the part of check's JSON report that the tests read.
type Report struct {
	Pass     bool           `json:"pass"`
	Verdict  string         `json:"verdict"`
	Requests int            `json:"requests"`
	Failed   int            `json:"failed"`
	Cut      int            `json:"cut"`
	Failures map[string]int `json:"failures"`
	Upgrades []struct {
		NewPID int `json:"new_pid"`
	} `json:"upgrades"`
}

// Build builds the main package in dir (relative to the test's
// directory, "." for its own) into a temporary directory and returns the
// executable.
func Build(t *testing.T, pkg string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build %s with: %v", pkg, err)
	}
	exe := filepath.Join(t.TempDir(), filepath.Base(strings.TrimSuffix(pkg, "/")))
	if pkg == "." {
		exe = filepath.Join(filepath.Dir(exe), "example")
	}
	cmd := exec.Command(goTool, "build", "-o", exe, pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return exe
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago, for network ("tcp" or "udp"): check must know the address before
// the server starts.
func FreeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Check builds the tableflip command and runs "tableflip check -json
// args… -- server…", and returns its report once it has passed: a verdict
// other than PASS fails the test, with check's output and the server's.
func Check(t *testing.T, args []string, server ...string) *Report {
	t.Helper()
	tableflip := Build(t, "github.com/seed589fcc9d/tableflip/cmd/tableflip")
	logFile := filepath.Join(t.TempDir(), "server.log")
	argv := append([]string{"check", "-json", "-log", logFile}, args...)
	argv = append(append(argv, "--"), server...)
	cmd := exec.Command(tableflip, argv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	serverOut, _ := os.ReadFile(logFile)
	var rep Report
	if jerr := json.Unmarshal(out, &rep); jerr != nil || err != nil || !rep.Pass {
		t.Fatalf("tableflip %s: %v (report: %v)\nverdict: %s\nstderr:\n%s\nserver's output:\n%s", strings.Join(argv, " "), err, jerr, rep.Verdict, stderr.String(), serverOut)
	}
	t.Logf("%s: %d requests, %d upgrades, %d long-lived connections cut: %s", strings.Join(server, " "), rep.Requests, len(rep.Upgrades), rep.Cut, rep.Verdict)
	return &rep
}
