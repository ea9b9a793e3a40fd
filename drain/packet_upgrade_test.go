//go:build unix

package drain_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed589fcc9d/tableflip/drain"
	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// The packet server's generations (see runGeneration for the HTTP ones):
// a UDP echo server on the Upgrader's ListenPacket, whose old generation
// stops as how says once the new one is ready:
//
//   - "packet-drain": PacketServer.Drain;
//   - "packet-close": what a server without a drain does, close the
//     socket and exit, with datagrams still being handled.
const (
	// packetWork is how long the handler works on a datagram before it
	// answers: the service time of a real server (this is no wait for
	// anything), long enough that every upgrade finds datagrams being
	// handled.
	packetWork    = time.Millisecond
	packetReaders = 4
)

func runPacketGeneration(how string) int {
	g, code := startGeneration()
	if g == nil {
		return code
	}
	defer g.upg.Stop()
	if how != "packet-drain" && how != "packet-close" {
		return g.fail(fmt.Errorf("unknown %s %q", envGeneration, how))
	}

	pc, err := g.upg.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return g.fail(err)
	}
	echo := func(conn net.PacketConn, p []byte, from net.Addr) {
		time.Sleep(packetWork)
		if _, err := conn.WriteTo(p, from); err != nil && how == "packet-drain" {
			fmt.Fprintf(os.Stderr, "generation %d: answer: %v\n", os.Getpid(), err)
		}
	}
	srv := drain.NewPacketServer(echo, drain.Options{Logger: g.log})
	served := make(chan error, packetReaders)
	for range packetReaders {
		go func() { served <- srv.Serve(pc) }()
	}

	if err := g.upg.Ready(); err != nil {
		return g.fail(err)
	}
	g.send(message{Event: "ready", PID: os.Getpid(), Addrs: []string{pc.LocalAddr().String()}})
	<-g.upg.Exit()

	m := message{Event: "exit"}
	if how == "packet-close" {
		pc.Close()
		<-g.settled
		g.send(m)
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainLimit)
	defer cancel()
	st, err := srv.Drain(ctx)
	m.Stats = []drain.Stats{st}
	if err != nil {
		m.Errors = append(m.Errors, "drain: "+err.Error())
	}
	for range packetReaders {
		if err := <-served; !errors.Is(err, net.ErrClosed) {
			m.Errors = append(m.Errors, fmt.Sprintf("serve: %v", err))
		}
	}
	<-g.settled // the upgrade report comes first
	g.send(m)
	return 0
}

// packetLoads starts datagram clients; a datagram not answered within
// timeout is lost.
func packetLoads(timeout time.Duration) func(*testing.T, context.Context, []string, *tls.Config) ([]*loadgen.Load, []loadResult) {
	return func(t *testing.T, ctx context.Context, addrs []string, _ *tls.Config) ([]*loadgen.Load, []loadResult) {
		l, err := loadgen.Start(ctx, loadgen.Options{
			URL:      "udp://" + addrs[0],
			Conns:    clients,
			Duration: time.Hour, // stopped by the test
			Timeout:  timeout,
		})
		if err != nil {
			t.Fatal(err)
		}
		return []*loadgen.Load{l}, []loadResult{{name: "datagram", mode: loadgen.ModeDatagram}}
	}
}

// A UDP server that drains loses no datagram across upgrades: the old
// generation stops reading once the new one is ready (and reads), and
// answers every datagram it has read; what it has not read waits in the
// socket's queue, which both generations share, for the new one.
func TestPacketUpgradeUnderLoadDrain(t *testing.T) {
	before, _ := udpReceiveDrops()
	res, reports, logFile := upgradeServerUnderLoad(t, "packet-drain", upgrades, 1, packetLoads(loadgen.DefaultTimeout))
	logResults(t, res)
	if after, ok := udpReceiveDrops(); ok {
		t.Logf("datagrams the kernel dropped for full receive queues meanwhile, host-wide: %d", after-before)
	}
	for _, r := range res {
		if r.failed != 0 || r.requests == 0 {
			t.Errorf("%s: %d of %d datagrams lost or failed between the first and the last upgrade, want 0", r.name, r.failed, r.requests)
		}
	}
	answered := 0
	for i, rep := range reports {
		for _, st := range rep.Stats {
			answered += st.Conns
			if st.Cut() > 0 {
				t.Errorf("generation %d: drain cut %d handlers", i+1, st.Cut())
			}
		}
		if len(rep.Errors) > 0 {
			out, _ := os.ReadFile(logFile)
			t.Errorf("generation %d: %v\ngenerations' stderr:\n%s", i+1, rep.Errors, out)
		}
	}
	// Else the test did not see what it is about.
	if answered == 0 {
		t.Errorf("no drain of %d found a datagram being handled", len(reports)-1)
	}
	t.Logf("datagrams answered by draining generations: %d", answered)
}

// The same upgrades with a generation that closes its socket and exits
// lose the datagrams it was handling: the test can see a loss.
func TestPacketUpgradeUnderLoadCloseLoses(t *testing.T) {
	// A lost datagram stops its client for the timeout.
	res, _, _ := upgradeServerUnderLoad(t, "packet-close", 5, 1, packetLoads(time.Second))
	logResults(t, res)
	if lost := res[0].failures[loadgen.Timeout]; lost == 0 {
		t.Errorf("closing without a drain lost no datagram in 5 upgrades: the test cannot see losses")
	}
}

// udpReceiveDrops reads the kernel's count of UDP datagrams dropped
// because a receive queue was full (RcvbufErrors in /proc/net/snmp, on
// Linux), for the log: it counts the whole host's.
func udpReceiveDrops() (int, bool) {
	f, err := os.Open("/proc/net/snmp")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(fields) {
				n, err := strconv.Atoi(fields[i])
				return n, err == nil
			}
		}
	}
	return 0, false
}
