package tableflip_test

import (
	"expvar"
	"log"

	"github.com/seed589fcc9d/tableflip"
)

// Stats publishes the generation and upgrade counters through expvar, at
// /debug/vars beside the program's other metrics; the control socket lets
// "tableflip upgrade" and "tableflip status" reach the live generation.
//
// What a read costs: Stats counts the connections this generation holds
// (no system call per connection; about a microsecond with ten of them,
// whatever else the host holds) and asks each draining generation for its
// count (one round trip to each, about 0.15 ms on loopback, at most 250 ms
// should one not answer). Generation, for the fixed facts, costs nothing.
// Both measured by BenchmarkStats.
func ExampleUpgrader_Stats() {
	upg, err := tableflip.New(tableflip.Options{ControlSocket: "/run/myserver/control.sock"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	// Computed at each read, so it is always current.
	expvar.Publish("tableflip", expvar.Func(func() any { return upg.Stats() }))

	// Free to call anywhere, in a handler or before Ready.
	log.Printf("generation %d (pid %d)", upg.Generation().Generation, upg.Generation().PID)

	// … Listen, Ready, and wait for upg.Exit() as usual.
}
