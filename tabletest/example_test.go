package tabletest_test

import (
	"errors"
	"fmt"

	"github.com/seed589fcc9d/tableflip/tabletest"
)

// serveUntilExit is code under test: it takes anything with the
// Upgrader's method set.
func serveUntilExit(upg tabletest.Interface) error {
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := upg.Ready(); err != nil {
		return err
	}
	<-upg.Exit()
	return nil
}

// Test code that takes an upgrader without starting processes: a failed
// upgrade leaves it serving, a successful one makes it exit.
func Example() {
	upg := tabletest.New()
	done := make(chan error)
	go func() { done <- serveUntilExit(upg) }()

	select {
	case <-upg.Readied():
	case err := <-done:
		fmt.Println("exited early:", err)
		return
	}
	upg.UpgradeFunc = func() error { return errors.New("new version crashed") }
	fmt.Println("upgrade:", upg.Upgrade())
	upg.UpgradeFunc = nil
	fmt.Println("upgrade:", upg.Upgrade())
	fmt.Println("served until exit:", <-done)
	// Output:
	// upgrade: new version crashed
	// upgrade: <nil>
	// served until exit: <nil>
}
