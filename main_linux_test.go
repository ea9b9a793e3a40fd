//go:build linux

package tableflip

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// The real-process tests re-run the test binary as the generations of a
// server, as os/exec's tests do: TestMain runs the helper that
// helperEnv names instead of the tests. A test file registers the helpers
// it uses (registerHelper, in an init function) and starts them with the
// environment entry that helper returns.

// helperEnv names the helper that the test binary runs.
const helperEnv = "TABLEFLIP_TEST_HELPER"

var (
	helpers     = map[string]func() int{}
	helpersUsed sync.Map
	// benchmarkHelpers are used by benchmarks only, which a test run
	// does not run.
	benchmarkHelpers = map[string]bool{}
)

// registerHelper makes fn the helper called name. Two helpers of one
// name are a mistake in the tests.
func registerHelper(name string, fn func() int) {
	if _, dup := helpers[name]; dup {
		panic("two helpers called " + name)
	}
	helpers[name] = fn
}

// registerBenchmarkHelper is registerHelper for a helper that only
// benchmarks use.
func registerBenchmarkHelper(name string, fn func() int) {
	registerHelper(name, fn)
	benchmarkHelpers[name] = true
}

// helper returns the environment entry that runs the registered helper
// name, and records that it is used.
func helper(name string) string {
	if _, ok := helpers[name]; !ok {
		panic("no helper called " + name)
	}
	helpersUsed.Store(name, true)
	return helperEnv + "=" + name
}

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		h := helpers[name]
		if h == nil {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h())
	}
	// Orphaned generations become children of the test process, so
	// that it can wait for them and see that none is left.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	code := m.Run()
	// A helper that no test starts is dead code, when every test ran.
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && !testing.Short() {
		var unused []string
		for name := range helpers {
			if _, ok := helpersUsed.Load(name); !ok && !benchmarkHelpers[name] {
				unused = append(unused, name)
			}
		}
		if len(unused) > 0 {
			slices.Sort(unused)
			fmt.Fprintf(os.Stderr, "helpers registered but never used: %q\n", unused)
			code = 1
		}
	}
	os.Exit(code)
}
