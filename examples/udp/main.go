// Command udp is a UDP echo server that upgrades without losing a
// datagram: tableflip hands its socket to each new generation (the socket
// itself, so both generations read one queue), and drain.PacketServer
// makes the old one stop reading without touching that queue and answer
// every datagram it has read before it closes its copy.
//
//	go build -o /tmp/udp ./examples/udp
//	/tmp/udp -addr 127.0.0.1:9001 -pid-file /tmp/udp.pid &
//	kill -HUP $(cat /tmp/udp.pid)   # upgrade
//	kill $(cat /tmp/udp.pid)        # drain and stop
//
// Or let tableflip check upgrade it under load:
//
//	tableflip check -url udp://127.0.0.1:9001 -pidfile /tmp/udp.pid \
//		-- /tmp/udp -addr 127.0.0.1:9001 -pid-file /tmp/udp.pid
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os/signal"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

var (
	addr    = flag.String("addr", "127.0.0.1:9001", "`address` to listen on")
	pidFile = flag.String("pid-file", "", "PID `file` to write")
	readers = flag.Int("readers", 4, "goroutines that read and answer datagrams")
)

func main() {
	flag.Parse()
	upg := newUpgrader(tableflip.Options{PIDFile: *pidFile})
	defer upg.Stop()

	pc, err := upg.ListenPacket("udp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := drain.NewPacketServer(echo, drain.Options{})
	// Reading from before Ready: once the old generation stops reading,
	// this one is reading already.
	for range *readers {
		go srv.Serve(pc)
	}

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if stats, err := srv.Drain(ctx); err != nil {
		log.Printf("drain: %v (%d datagrams unanswered)", err, stats.Cut())
	}
}

// echo answers each datagram with itself.
func echo(conn net.PacketConn, p []byte, from net.Addr) {
	if _, err := conn.WriteTo(p, from); err != nil {
		log.Printf("answer to %s: %v", from, err)
	}
}

// newUpgrader creates the Upgrader and sets up the signals, as the README
// does: SIGHUP upgrades, SIGTERM and SIGINT stop gracefully, handled from
// before New on so that they never kill a generation that has been
// announced as the serving one.
func newUpgrader(opts tableflip.Options) *tableflip.Upgrader {
	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	opts.UpgradeSignal = syscall.SIGHUP
	upg, err := tableflip.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		<-stopped.Done()
		unnotify()
		upg.Stop()
	}()
	return upg
}
