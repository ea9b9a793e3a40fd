// Command server is the program the README shows, as it stands: the
// systemd units in examples/systemd run it, and the real-process tests use
// it as their server. Between the "README begins" and "README ends"
// markers, its main is the README's code block, word for word (a test
// checks that).
//
// Flags name what the units pass: -addr (default 127.0.0.1:8080, the
// address of examples/systemd/server.socket), -pid-file and -control.
// Every response names the pid that served it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

var (
	addr    = flag.String("addr", "127.0.0.1:8080", "`address` to listen on")
	pidFile = flag.String("pid-file", "", "PID `file` to write")
	control = flag.String("control", "", "control socket `path` (tableflip upgrade, tableflip status)")
)

func main() {
	flag.Parse()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid %d\n", os.Getpid())
	})

	// README begins
	// SIGTERM and SIGINT stop gracefully. Handled before New, so that they
	// never kill a generation that has been announced as the serving one.
	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer unnotify()

	upg, err := tableflip.New(tableflip.Options{
		PIDFile:       *pidFile,
		ControlSocket: *control,
		// SIGHUP upgrades, from New on. Upgrade does the same in process.
		UpgradeSignal: syscall.SIGHUP,
		Systemd:       &tableflip.SystemdOptions{FdStore: true},
		Logger:        slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()
	go func() {
		<-stopped.Done()
		upg.Stop()
	}()

	// Inherited from the previous generation, or created on a first start.
	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := drain.NewServer(&http.Server{Handler: handler}, drain.Options{})
	go srv.Serve(ln)

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	// Stop accepting, finish every request, close idle connections without
	// cutting off a client that is sending, then shut down.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Drain(ctx)
	// README ends
}
