// Command tcp is a line-echo server over TCP that upgrades without losing
// a line: tableflip hands its listening socket to each new generation, and
// drain.Listener lets the old one finish what its clients are sending.
//
// Each line a client sends is sent back. Once its generation drains, a
// connection is served until it has been idle for a second (a line
// protocol cannot tell its client to go elsewhere, as HTTP's "Connection:
// close" does, so closing a connection at once would lose the line its
// client is sending); one that stays busy is cut at -drain-timeout.
//
//	go build -o /tmp/tcp ./examples/tcp
//	/tmp/tcp -addr 127.0.0.1:9000 -pid-file /tmp/tcp.pid &
//	kill -HUP $(cat /tmp/tcp.pid)   # upgrade
//	kill $(cat /tmp/tcp.pid)        # drain and stop
//
// Or let tableflip check upgrade it under load, with connections that
// hold on across upgrades:
//
//	tableflip check -url tcp://127.0.0.1:9000 -pidfile /tmp/tcp.pid -mode line,longlived \
//		-- /tmp/tcp -addr 127.0.0.1:9000 -pid-file /tmp/tcp.pid -drain-timeout 2s
package main

import (
	"bufio"
	"context"
	"flag"
	"io"
	"log"
	"os/signal"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

var (
	addr         = flag.String("addr", "127.0.0.1:9000", "`address` to listen on")
	pidFile      = flag.String("pid-file", "", "PID `file` to write")
	drainTimeout = flag.Duration("drain-timeout", 30*time.Second, "how long an old generation serves its connections")
)

// idleGrace is how long a connection may be idle once the drain has
// begun before it is closed.
const idleGrace = time.Second

func main() {
	flag.Parse()
	upg := newUpgrader(tableflip.Options{PIDFile: *pidFile})
	defer upg.Stop()

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	l := drain.NewListener(ln, drain.Options{})
	go func() {
		for {
			c, err := l.AcceptConn()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), *drainTimeout)
	defer cancel()
	stats, err := l.Drain(ctx)
	if stats.Cut() > 0 {
		log.Printf("drain cut %d of %d connections: %v", stats.Cut(), stats.Conns, err)
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

// serve echoes lines until the client closes, or, once the drain has
// begun, until the connection has been idle for idleGrace.
func serve(c *drain.Conn) {
	defer c.Close()
	stop := context.AfterFunc(c.Context(), func() { c.SetReadDeadline(time.Now().Add(idleGrace)) })
	defer stop()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if _, werr := io.WriteString(c, line); err != nil || werr != nil {
			return
		}
		if c.Context().Err() != nil {
			c.SetReadDeadline(time.Now().Add(idleGrace))
		}
	}
}
