package main

import "github.com/seed589fcc9d/tableflip/internal/supervisor"

// isRunCommand reports whether TestMain runs arg as tableflip itself
// would: the supervisor (run), and the processes it starts of its own
// executable, which in these tests is the test binary.
func isRunCommand(arg string) bool {
	return arg == "run" || arg == supervisor.ZygoteCommand || arg == supervisor.StateCommand
}
