package tableflip_test

import (
	"expvar"
	"log"

	"github.com/seed589fcc9d/tableflip"
)

// Stats publishes the generation and upgrade counters through expvar, at
// /debug/vars beside the program's other metrics; the control socket lets
// "tableflip upgrade" and "tableflip status" reach the live generation.
func ExampleUpgrader_Stats() {
	upg, err := tableflip.New(tableflip.Options{ControlSocket: "/run/myserver/control.sock"})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	// Computed at each read, so it is always current.
	expvar.Publish("tableflip", expvar.Func(func() any { return upg.Stats() }))

	// … Listen, Ready, and wait for upg.Exit() as usual.
}
