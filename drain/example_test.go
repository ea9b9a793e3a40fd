package drain_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

// Serve an http.Server, then drain it as a SIGTERM handler would.
func ExampleServer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := drain.NewServer(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello")
		}),
	}, drain.Options{IdleGrace: 100 * time.Millisecond})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))

	// In a program: wait for SIGTERM, or for the Upgrader's Exit channel.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stats, err := srv.Drain(ctx)
	fmt.Println("drain:", err, "cut:", stats.Cut())
	fmt.Println("serve:", <-served)
	// Output:
	// hello
	// drain: <nil> cut: 0
	// serve: http: Server closed
}

// A line-echo server that finishes the line it is on when the drain
// begins.
func ExampleListener() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
			go func() {
				defer c.Close()
				// Wake the read below when the drain begins.
				stop := context.AfterFunc(c.Context(), func() { c.SetReadDeadline(time.Now()) })
				defer stop()
				br := bufio.NewReader(c)
				for c.Context().Err() == nil {
					line, err := br.ReadString('\n')
					io.WriteString(c, line)
					if err != nil {
						return
					}
				}
			}()
		}
	}()

	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintln(conn, "ping")
	line, _ := bufio.NewReader(conn).ReadString('\n')
	fmt.Print(line)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stats, err := l.Drain(ctx)
	fmt.Println("drain:", err, "conns:", stats.Conns, "cut:", stats.Cut())
	// Output:
	// ping
	// drain: <nil> conns: 1 cut: 0
}

// A program upgraded by tableflip's Upgrader: SIGHUP starts the next
// generation, and once that one is ready this one drains, in place of the
// bare http.Server.Shutdown that loses requests. (No output: it serves
// until it is upgraded or stopped.)
func Example_upgrader() {
	// Before New, so that SIGTERM never kills a serving generation.
	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer unnotify()

	// SIGHUP upgrades from New on. It is refused (and logged) with
	// tableflip.ErrParentRunning while the previous generation is still
	// draining.
	upg, err := tableflip.New(tableflip.Options{UpgradeSignal: syscall.SIGHUP})
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
	srv := drain.NewServer(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello")
		}),
	}, drain.Options{})
	go srv.Serve(ln)

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stats, err := srv.Drain(ctx)
	if err != nil {
		log.Printf("drain: %v", err)
	}
	log.Printf("drained %d connections, cut %d", stats.Conns, stats.Cut())
}
