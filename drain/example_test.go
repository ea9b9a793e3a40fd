package drain_test

import (
	"bufio"
	"context"
	"errors"
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

// A line-echo server. Once the drain begins it serves each connection
// until the connection has been idle for a grace period: a line protocol
// cannot tell its client to go elsewhere, as HTTP's "Connection: close"
// does, so closing a connection at once would lose a line that the
// client is sending at that moment.
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
				// From the drain on, a read waits at most grace.
				const grace = time.Second
				stop := context.AfterFunc(c.Context(), func() { c.SetReadDeadline(time.Now().Add(grace)) })
				defer stop()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if _, werr := io.WriteString(c, line); err != nil || werr != nil {
						return
					}
					if c.Context().Err() != nil {
						c.SetReadDeadline(time.Now().Add(grace))
					}
				}
			}()
		}
	}()

	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	br := bufio.NewReader(conn)
	fmt.Fprintln(conn, "ping")
	line, _ := br.ReadString('\n')
	fmt.Print(line)

	drained := make(chan string)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stats, err := l.Drain(ctx)
		drained <- fmt.Sprint("drain: ", err, ", conns: ", stats.Conns, ", cut: ", stats.Cut())
	}()
	<-l.Draining()
	// A line sent as the drain begins is answered; the client's close
	// ends the drain.
	fmt.Fprintln(conn, "pong")
	line, _ = br.ReadString('\n')
	fmt.Print(line)
	conn.Close()
	fmt.Println(<-drained)
	// Output:
	// ping
	// pong
	// drain: <nil>, conns: 1, cut: 0
}

// A UDP echo server that answers every datagram it has read before it
// stops.
func ExamplePacketServer() {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := drain.NewPacketServer(func(conn net.PacketConn, p []byte, from net.Addr) {
		conn.WriteTo(p, from)
	}, drain.Options{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()

	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	fmt.Println(string(buf[:n]))

	// In a program: wait for SIGTERM, or for the Upgrader's Exit channel.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stats, err := srv.Drain(ctx)
	fmt.Println("drain:", err, "cut:", stats.Cut())
	fmt.Println("serve stopped:", errors.Is(<-served, net.ErrClosed))
	// Output:
	// ping
	// drain: <nil> cut: 0
	// serve stopped: true
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
