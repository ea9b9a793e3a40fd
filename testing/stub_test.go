package testing_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/seed589fcc9d/tableflip"
	tftesting "github.com/seed589fcc9d/tableflip/testing"
)

func TestStub(t *testing.T) {
	upg, err := tftesting.New()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := upg.Upgrade(); !errors.Is(err, tableflip.ErrNotSupported) {
		t.Errorf("Upgrade = %v, want tableflip.ErrNotSupported", err)
	}
	if l, err := upg.Listener("tcp", "127.0.0.1:0"); l != nil || err != nil {
		t.Errorf("Listener = %v, %v; want nothing inherited", l, err)
	}
	if c, err := upg.Conn("tcp", "x"); c != nil || err != nil {
		t.Errorf("Conn = %v, %v; want nothing inherited", c, err)
	}
	if f, err := upg.File("x"); f != nil || err != nil {
		t.Errorf("File = %v, %v; want nothing inherited", f, err)
	}
	for name, err := range map[string]error{
		"AddListener":   upg.AddListener("tcp", "x", ln),
		"AddConn":       upg.AddConn("tcp", "x", nil),
		"AddFile":       upg.AddFile("x", os.Stdin),
		"Ready":         upg.Ready(),
		"WaitForParent": upg.WaitForParent(context.Background()),
	} {
		if err != nil {
			t.Errorf("%s = %v, want nil", name, err)
		}
	}
	if upg.HasParent() {
		t.Error("HasParent = true")
	}
	select {
	case <-upg.Exit():
		t.Fatal("Exit closed before Stop")
	default:
	}
	upg.Stop()
	upg.Stop()
	<-upg.Exit()
}

// The zero value works, and so do the methods of a nil *Fds, as in
// cloudflare/tableflip's stub.
func TestStubZeroValue(t *testing.T) {
	var upg tftesting.Upgrader
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	upg.Stop()
	<-upg.Exit()
}

// A program written for github.com/cloudflare/tableflip and its testing
// stub builds and runs against this module with only its import paths
// changed.
func TestCloudflareProgram(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build the program with: %v", err)
	}
	src, err := os.ReadFile(filepath.Join("testdata", "cfprogram", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	const from, to = "github.com/cloudflare/tableflip", "github.com/seed589fcc9d/tableflip"
	for _, imp := range []string{`"` + from + `"`, `"` + from + `/testing"`} {
		if !strings.Contains(string(src), imp) {
			t.Fatalf("the program does not import %s", imp)
		}
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"main.go": strings.ReplaceAll(string(src), from, to),
		"go.mod":  "module cfprogram\n\ngo 1.23\n\nrequire " + to + " v0.0.0\n\nreplace " + to + " => " + root + "\n",
		"go.sum":  string(sum),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(dir, "cfprogram")
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	build := exec.Command(goTool, "build", "-o", exe, ".")
	build.Dir = dir
	// Everything it needs is on this machine already: this module's
	// dependencies, which the test binary was built with.
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build of the program with its import paths changed: %v\n%s", err, out)
	}
	out, err := exec.Command(exe).CombinedOutput()
	want := "served: hello\ninherited: true false\nwait for parent: <nil>\nupgrade not supported: true\n"
	if err != nil || string(out) != want {
		t.Errorf("the program: %v, printed:\n%s\nwant:\n%s", err, out, want)
	}
}
