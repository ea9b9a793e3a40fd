package tabletest_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/seed589fcc9d/tableflip"
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

// counter is code under test that carries a count across upgrades in
// the state (tableflip.Options.WriteState, Upgrader.State).
type counter struct{ n int }

func (c *counter) save(w io.Writer) error {
	_, err := fmt.Fprintf(w, "counter v1 %d\n", c.n)
	return err
}

func (c *counter) load(upg tabletest.Interface) error {
	r, err := upg.State()
	if errors.Is(err, tableflip.ErrNoState) {
		return nil // a first start
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fscanf(r, "counter v1 %d\n", &c.n)
	return err
}

// Test a state handover from both sides: what the old generation
// writes, and what the new one reads.
func Example_state() {
	old := tabletest.New()
	c := &counter{n: 41}
	old.WriteState = c.save
	old.Ready()
	if err := old.Upgrade(); err != nil {
		fmt.Println("upgrade:", err)
	}

	next := tabletest.New()
	next.ParentState = bytes.NewReader(old.HandedOver())
	var c2 counter
	if err := c2.load(next); err != nil {
		fmt.Println("load:", err)
	}
	c2.n++
	fmt.Println("count:", c2.n)
	// Output:
	// count: 42
}
