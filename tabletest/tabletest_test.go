package tabletest_test

import (
	"errors"
	"testing"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/tabletest"
)

// Both the real Upgrader and the double have the whole method set.
var (
	_ tabletest.Interface = (*tableflip.Upgrader)(nil)
	_ tabletest.Interface = (*tabletest.Upgrader)(nil)
)

func TestUpgraderLifecycle(t *testing.T) {
	upg := tabletest.New()
	if err := upg.Upgrade(); !errors.Is(err, tableflip.ErrNotReady) {
		t.Errorf("Upgrade before Ready: %v, want ErrNotReady", err)
	}
	upg.Ready()
	boom := errors.New("boom")
	upg.UpgradeFunc = func() error { return boom }
	if err := upg.Upgrade(); err != boom {
		t.Errorf("failing Upgrade: %v, want %v", err, boom)
	}
	select {
	case <-upg.Exit():
		t.Fatal("Exit closed after a failed upgrade")
	default:
	}
	upg.UpgradeFunc = nil
	if err := upg.Upgrade(); err != nil {
		t.Errorf("Upgrade: %v", err)
	}
	<-upg.Exit()
	if err := upg.Upgrade(); !errors.Is(err, tableflip.ErrUpgraded) {
		t.Errorf("Upgrade after an upgrade: %v, want ErrUpgraded", err)
	}
	if n := upg.Upgrades(); n != 2 {
		t.Errorf("Upgrades() = %d, want 2", n)
	}
	upg.Stop()
	if err := upg.Upgrade(); !errors.Is(err, tableflip.ErrStopped) {
		t.Errorf("Upgrade after Stop: %v, want ErrStopped", err)
	}
}

func TestUpgraderListens(t *testing.T) {
	upg := tabletest.New()
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := upg.AddListener("tcp", "x", ln.(tableflip.Listener)); err != nil {
		t.Errorf("AddListener: %v", err)
	}
	if got, err := upg.Listener("tcp", "127.0.0.1:0"); got != nil || err != nil {
		t.Errorf("Listener = %v, %v; want nothing inherited", got, err)
	}
}
