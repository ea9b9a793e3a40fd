// Package drain stops network servers without losing a request: the
// old generation of a graceful upgrade, or any server told to stop by
// SIGTERM (Kubernetes, systemd). It needs no Upgrader.
//
// # Why not http.Server.Shutdown
//
// Shutdown loses requests in two ways. It closes idle keep-alive
// connections at once, so a client that is sending its next request at
// that moment gets EOF; clients that do not retry (and any client sending
// a POST) see an error. And net/http drops, without any response, a
// request that it reads after Shutdown has begun, so a connection
// accepted just before the listener closed loses its first request.
//
// [Server.Drain] goes in an order that loses nothing: it closes only this
// process's listener (a process sharing the socket keeps accepting from
// the kernel queue), answers every further HTTP/1.x request with
// "Connection: close", gives accepted connections time to send their
// request, closes a keep-alive connection only after it has been idle for
// [Options.IdleGrace], and calls Shutdown only when no HTTP/1.x
// connection is left, so that HTTP/2 connections get a GOAWAY and finish
// their streams. At the deadline it closes what is left and says how much
// in [Stats].
//
// [Listener] does the same for servers that are not HTTP: each accepted
// [Conn] has a Context that is cancelled when the drain begins. A line
// protocol has no "Connection: close" to tell a client to go elsewhere,
// so a connection closed the moment the drain begins loses the line its
// client may be sending: serve on until the connection has been idle for
// a grace period (the Listener example), and let the deadline cut
// connections that stay busy.
//
// # Packet servers
//
// [PacketServer] does it for datagrams (UDP, unixgram). What an upgrade
// can lose there differs from connections: the old and the new
// generation hold the same socket (the Upgrader passes the socket
// itself, not a twin bound with SO_REUSEPORT), and the kernel queues each
// datagram once, for whichever process reads it first. So a datagram is
// lost only
//
//   - if a generation reads it and stops (closes the socket, exits)
//     before it has answered; stopping the reads with a read deadline
//     does not help, as the handlers still running are cut when the
//     process exits; or
//   - if nobody reads the socket for so long that its receive queue
//     fills: the kernel then drops what arrives (Linux counts those in
//     RcvbufErrors, /proc/net/snmp).
//
// [PacketServer.Drain] stops reading without touching the queue, waits
// until the handler of every datagram already read has returned (and so
// answered), and only then closes this process's copy of the socket. The
// old generation drains once the new one is ready, and a new generation
// that starts Serve before Ready (as the Upgrader example does with its
// listener) is reading by then: the old one stops reading only once the
// new one reads, and what arrives between waits in the queue for it.
// Starting Serve only after Ready instead means that a new generation
// that fails before Ready has read, and lost, nothing, at the cost of a
// short gap in which the queue must hold what arrives.
//
// Measured (the package's TestPacketUpgradeUnderLoad tests, 2 cores): a
// UDP echo server with 4 readers and 1 ms of work per datagram, under 8
// clients, upgraded 20 times, lost 0 datagrams, and its draining
// generations answered about 70 that they had read; the same server
// closing its socket when told to exit lost 12 to 16 in 5 upgrades.
//
// # Upgrades
//
// With the Upgrader of github.com/seed589fcc9d/tableflip, drain the old
// generation once the new one is ready, in place of a bare Shutdown (this
// is the package's Upgrader example, which the tests compile):
//
//	func main() {
//		// Before New, so that SIGTERM never kills a serving generation.
//		stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM)
//		defer unnotify()
//
//		// SIGHUP upgrades from New on. It is refused (and logged) with
//		// tableflip.ErrParentRunning while the previous generation is still
//		// draining.
//		upg, err := tableflip.New(tableflip.Options{UpgradeSignal: syscall.SIGHUP})
//		if err != nil {
//			log.Fatal(err)
//		}
//		defer upg.Stop()
//		go func() {
//			<-stopped.Done()
//			upg.Stop()
//		}()
//
//		ln, err := upg.Listen("tcp", "localhost:8080")
//		if err != nil {
//			log.Fatal(err)
//		}
//		srv := drain.NewServer(&http.Server{Handler: handler()}, drain.Options{})
//		go srv.Serve(ln)
//
//		if err := upg.Ready(); err != nil {
//			log.Fatal(err)
//		}
//		<-upg.Exit()
//
//		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
//		defer cancel()
//		stats, err := srv.Drain(ctx)
//		if err != nil {
//			log.Printf("drain: %v", err)
//		}
//		log.Printf("drained %d connections, cut %d", stats.Conns, stats.Cut())
//	}
//
// # SIGTERM
//
// Without upgrades, for example in a Kubernetes pod, drain on SIGTERM
// with a deadline shorter than terminationGracePeriodSeconds:
//
//	srv := drain.NewServer(&http.Server{Handler: handler()}, drain.Options{})
//	ln, err := net.Listen("tcp", ":8080")
//	if err != nil {
//		log.Fatal(err)
//	}
//	go srv.Serve(ln)
//
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
//	<-ctx.Done()
//	stop()
//	dctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
//	defer cancel()
//	srv.Drain(dctx)
//
// A process that stops alone has nobody to pass its socket to; the
// readiness probe and endpoint removal must steer new clients away, as
// with any graceful stop.
package drain
