// Command grpc is a gRPC server that upgrades without failing a call:
// tableflip hands its listening socket to each new generation, and the old
// one stops with GracefulStop, which closes only its copy of the listener,
// sends GOAWAY so that clients open their next calls on the new
// generation, and waits for the calls in progress. It serves gRPC's
// health service, grpc.health.v1.Health.
//
// It is a module of its own (examples/grpc/go.mod), so that the
// tableflip module does not depend on gRPC.
//
//	cd examples/grpc && go build -o /tmp/grpcserver .
//	/tmp/grpcserver -addr 127.0.0.1:9002 -pid-file /tmp/grpc.pid &
//	kill -HUP $(cat /tmp/grpc.pid)   # upgrade
//
// tableflip check upgrades it under load, with unary calls over HTTP/2
// without TLS, as gRPC's insecure credentials speak it:
//
//	tableflip check -url http://127.0.0.1:9002/grpc.health.v1.Health/Check -mode grpc \
//		-pidfile /tmp/grpc.pid -- /tmp/grpcserver -addr 127.0.0.1:9002 -pid-file /tmp/grpc.pid
package main

import (
	"context"
	"flag"
	"log"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/seed589fcc9d/tableflip"
)

var (
	addr         = flag.String("addr", "127.0.0.1:9002", "`address` to listen on")
	pidFile      = flag.String("pid-file", "", "PID `file` to write")
	drainTimeout = flag.Duration("drain-timeout", 30*time.Second, "how long an old generation may take to finish its calls")
)

func main() {
	flag.Parse()
	upg := newUpgrader(tableflip.Options{PIDFile: *pidFile})
	defer upg.Stop()

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	// GracefulStop waits for every call, for as long as they take; the
	// deadline ends the stragglers.
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(*drainTimeout):
		log.Printf("calls still running after %s: stopping them", *drainTimeout)
		srv.Stop()
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
