package tabletest_test

import (
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

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

func TestUpgraderState(t *testing.T) {
	upg := tabletest.New()
	if r, err := upg.State(); r != nil || !errors.Is(err, tableflip.ErrNoState) {
		t.Errorf("State without ParentState = %v, %v; want tableflip.ErrNoState", r, err)
	}
	upg.ParentState = strings.NewReader("v1 hello")
	r, err := upg.State()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r); string(b) != "v1 hello" || err != nil {
		t.Errorf("state %q, %v; want v1 hello", b, err)
	}
	upg.Ready()
	if r, err := upg.State(); err != nil {
		t.Errorf("State after Ready: %v", err)
	} else if b, _ := io.ReadAll(r); len(b) != 0 {
		t.Errorf("State after Ready reads %q, want nothing: Ready discards it", b)
	}
}

func TestUpgraderWriteState(t *testing.T) {
	upg := tabletest.New()
	upg.Ready()
	full := errors.New("disk full")
	upg.WriteState = func(w io.Writer) error { return full }
	if err := upg.Upgrade(); !errors.Is(err, full) {
		t.Errorf("Upgrade with a failing WriteState = %v, want it to wrap %v", err, full)
	}
	select {
	case <-upg.Exit():
		t.Fatal("Exit closed after a failed upgrade")
	default:
	}
	st := upg.Stats()
	if st.UpgradesAttempted != 1 || st.UpgradesFailed != 1 || st.LastFailure == nil || !strings.Contains(st.LastFailure.Message, "disk full") || st.LastFailureAt.IsZero() {
		t.Errorf("Stats after a failed upgrade: %+v", st)
	}
	if upg.HandedOver() != nil {
		t.Errorf("HandedOver after a failed upgrade: %q", upg.HandedOver())
	}

	upg.WriteState = func(w io.Writer) error { _, err := io.WriteString(w, "v1 counter=3"); return err }
	if err := upg.Upgrade(); err != nil {
		t.Fatal(err)
	}
	if got := string(upg.HandedOver()); got != "v1 counter=3" {
		t.Errorf("HandedOver = %q", got)
	}
	st = upg.Stats()
	if st.UpgradesAttempted != 2 || st.UpgradesSucceeded != 1 || st.UpgradesFailed != 1 || !st.Exiting || !st.Ready {
		t.Errorf("Stats after a successful upgrade: %+v", st)
	}
}

func TestUpgraderStats(t *testing.T) {
	before := time.Now()
	upg := tabletest.New()
	st := upg.Stats()
	if st.PID != os.Getpid() || st.Generation != 1 || st.ParentPID != 0 || st.Ready || st.Exiting || st.Started.Before(before) ||
		len(st.Generations) != 1 || st.Generations[0].PID != os.Getpid() || st.Generations[0].Conns != -1 {
		t.Errorf("Stats of a new double: %+v", st)
	}
	if g := upg.Generation(); g.PID != os.Getpid() || g.Generation != 1 || g.ParentPID != 0 || !g.Started.Equal(st.Started) || g.Conns != -1 {
		t.Errorf("Generation of a new double: %+v", g)
	}
	// An upgrade under way is one, and refuses another.
	upg.Ready()
	inside, release := make(chan struct{}), make(chan struct{})
	upg.UpgradeFunc = func() error {
		close(inside)
		<-release
		return nil
	}
	done := make(chan error)
	go func() { done <- upg.Upgrade() }()
	<-inside
	if st := upg.Stats(); !st.Upgrading || st.UpgradesAttempted != 1 || st.UpgradesFailed != 0 {
		t.Errorf("Stats during an upgrade: %+v", st)
	}
	if err := upg.Upgrade(); !errors.Is(err, tableflip.ErrUpgradeInProgress) {
		t.Errorf("Upgrade during another = %v, want ErrUpgradeInProgress", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Error(err)
	}
	if st := upg.Stats(); st.Upgrading || st.UpgradesSucceeded != 1 || !st.Exiting {
		t.Errorf("Stats after the upgrade: %+v", st)
	}
}

// The double says where the code under test listens.
func TestUpgraderAddr(t *testing.T) {
	upg := tabletest.New()
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := upg.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got := upg.Addr("tcp", "127.0.0.1:0"); got == nil || got.String() != ln.Addr().String() {
		t.Errorf("Addr(tcp) = %v, want %v", got, ln.Addr())
	}
	if got := upg.Addr("udp", "127.0.0.1:0"); got == nil || got.String() != pc.LocalAddr().String() {
		t.Errorf("Addr(udp) = %v, want %v", got, pc.LocalAddr())
	}
	if got := upg.Addr("tcp", "127.0.0.1:1"); got != nil {
		t.Errorf("Addr of an address never asked for = %v, want nil", got)
	}
}

// Interface has every method of *tableflip.Upgrader, its embedded Fds'
// included: one added to the Upgrader must be added here (and to the
// double) too.
func TestInterfaceIsTheWholeMethodSet(t *testing.T) {
	upgrader := reflect.TypeOf((*tableflip.Upgrader)(nil))
	iface := reflect.TypeOf((*tabletest.Interface)(nil)).Elem()
	for i := range upgrader.NumMethod() {
		if name := upgrader.Method(i).Name; !hasMethod(iface, name) {
			t.Errorf("tabletest.Interface lacks (*tableflip.Upgrader).%s", name)
		}
	}
}

func hasMethod(t reflect.Type, name string) bool {
	_, ok := t.MethodByName(name)
	return ok
}
