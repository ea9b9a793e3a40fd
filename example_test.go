//go:build unix

package tableflip_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

// An HTTP server that upgrades on SIGHUP, stops on SIGTERM, and drains
// without losing a request.
func Example_httpServer() {
	// Before New, so that SIGTERM never kills a serving generation.
	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer unnotify()

	upg, err := tableflip.New(tableflip.Options{
		PIDFile:       "app.pid",
		UpgradeSignal: syscall.SIGHUP, // from New on, SIGHUP upgrades
	})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	go func() {
		<-stopped.Done()
		upg.Stop()
	}()

	ln, err := upg.Listen("tcp", "localhost:8080")
	if err != nil {
		log.Fatal(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %d\n", os.Getpid())
	})
	srv := drain.NewServer(&http.Server{Handler: handler}, drain.Options{})
	go srv.Serve(ln)

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if stats, err := srv.Drain(ctx); err != nil {
		log.Printf("drain cut %d connections: %v", stats.Cut(), err)
	}
}

// A program that handles the upgrade signal itself, to log each outcome
// its own way, registers the signal before New: from the moment a new
// generation can be announced as the serving one (at its Ready), a SIGHUP
// must not find the signal's default action, which kills the process.
// Registering it in a goroutine started after New leaves that window open.
func Example_ownSignalHandler() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	upg, err := tableflip.New(tableflip.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	go func() {
		for range hup {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Listen("tcp", "localhost:8080")
	if err != nil {
		log.Fatal(err)
	}
	srv := drain.NewServer(&http.Server{Handler: http.NotFoundHandler()}, drain.Options{})
	go srv.Serve(ln)
	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Drain(ctx)
}

// A TCP echo server that upgrades on SIGHUP; each generation finishes its
// own connections.
func Example_tcpServer() {
	upg, err := tableflip.New(tableflip.Options{UpgradeSignal: syscall.SIGHUP})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	ln, err := upg.Listen("tcp", "localhost:7070")
	if err != nil {
		log.Fatal(err)
	}
	// drain.Listener tells each connection when to wind down.
	dl := drain.NewListener(ln, drain.Options{})
	go func() {
		for {
			c, err := dl.AcceptConn()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				for c.Context().Err() == nil {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dl.Drain(ctx)
}

// The lifecycle of a first generation, start to final stop.
func ExampleNew() {
	upg, err := tableflip.New(tableflip.Options{})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	fmt.Println("upgrade before Ready:", upg.Upgrade())
	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("has parent:", upg.HasParent())

	upg.Stop()
	<-upg.Exit()
	fmt.Println("upgrade after Stop:", upg.Upgrade())

	_, err = net.Dial("tcp", ln.Addr().String())
	fmt.Println("still serving until the program closes its listener:", err == nil)
	// Output:
	// upgrade before Ready: tableflip: process is not ready yet
	// has parent: false
	// upgrade after Stop: tableflip: upgrader is stopped
	// still serving until the program closes its listener: true
}
