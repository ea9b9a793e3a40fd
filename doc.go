// Package tableflip upgrades a running network service without dropping a
// connection: the running process starts a new copy of its program, hands
// it its listening sockets, and stops serving only once the new copy says
// it is ready. If the new copy crashes, hangs or refuses, nothing changes
// for the clients and the old process keeps serving.
//
// It keeps the API of cloudflare/tableflip v1.2.3 (change the import path
// and nothing else) and fixes its faults: the handover is a versioned
// protocol on one Unix socket whose variable is removed and whose
// descriptors are close-on-exec as soon as they are read; the new process
// checks who its parent is; errors can be told apart with errors.Is and
// errors.As; a new generation that misses its deadline gets SIGTERM, then
// SIGKILL, and is reaped; the PID file is written atomically and only once
// the parent has acknowledged the new generation; an inherited connection
// really closes when the program closes it.
//
// # Usage
//
// A program creates one Upgrader, asks it for its sockets, calls Ready
// once it can serve, and upgrades on a signal of its choosing. When an
// upgrade has succeeded, Exit is closed: the old process stops accepting
// and finishes its work. Package drain does that without losing a request.
//
// Signals are set up before New: from the moment a new generation can be
// announced as the serving one, neither the upgrade signal nor SIGTERM may
// find its default action, which kills the process. Options.UpgradeSignal
// makes New install the upgrade signal's handler itself.
//
//	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
//	defer unnotify()
//
//	upg, err := tableflip.New(tableflip.Options{
//		PIDFile:       "/run/app.pid",
//		UpgradeSignal: syscall.SIGHUP,
//	})
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer upg.Stop()
//	go func() {
//		<-stopped.Done()
//		upg.Stop()
//	}()
//
//	ln, err := upg.Listen("tcp", ":8080")
//	if err != nil {
//		log.Fatal(err)
//	}
//	srv := drain.NewServer(&http.Server{Handler: handler}, drain.Options{})
//	go srv.Serve(ln)
//
//	if err := upg.Ready(); err != nil {
//		log.Fatal(err)
//	}
//	<-upg.Exit()
//
//	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
//	defer cancel()
//	srv.Drain(ctx)
//
// # Under systemd
//
// With Options.Systemd set, systemd follows the serving generation
// through sd_notify, and the sockets it passes are carried through every
// upgrade (see SystemdOptions):
//
//	[Service]
//	Type=notify
//	NotifyAccess=main
//	ExecStart=/usr/local/bin/app
//	ExecReload=/bin/kill -HUP $MAINPID
//
// With a PID file instead, use Type=simple with PIDFile= (the program sets
// Options.PIDFile to the same path). examples/systemd has units for both,
// for Type=notify-reload (which makes systemctl reload wait for the
// outcome of the upgrade) and for the control socket, and says what a
// real systemd does with each, as measured.
//
// # Knowing the outcome, and state
//
// Options.ControlSocket serves "upgrade" and "status" on a Unix socket
// that every generation hands on; "tableflip upgrade" and "tableflip
// status" are its clients, and Upgrader.Stats has the same numbers in
// process. Options.WriteState streams application state to the new
// generation, which reads it with Upgrader.State.
//
// # Several generations at once
//
// Options.MaxGenerations lets a ready generation upgrade while older ones
// still drain long-lived connections, and Options.DrainTimeout makes a
// draining generation exit after a deadline whatever the program does.
//
// # How an upgrade goes
//
// Upgrade starts the program again (the same arguments, environment and
// initial working directory), with one end of a Unix socket pair. Over it
// the new generation receives the names and descriptors of every socket
// and file in Fds, calls Ready, and is acknowledged; then Upgrade returns
// nil in the old generation and Exit is closed. The protocol is described
// in internal/handover. Only one upgrade runs at a time, and by default a
// new generation refuses to upgrade until its parent has exited.
//
// # Ownership of sockets
//
// A socket that Fds hands out belongs to the program: closing it closes it,
// and a socket closed before an upgrade is not passed on. The Add methods
// keep a duplicate of what they are given, which the caller may close.
//
// # Other platforms
//
// On platforms that are not unix (Windows, js/wasm, wasip1), New succeeds,
// Listen creates fresh sockets and Upgrade returns ErrNotSupported, so the
// same program runs there without upgrades. (Plan 9 is not supported: the
// package does not build there.)
package tableflip
