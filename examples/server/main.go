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
	upg, err := tableflip.New(tableflip.Options{
		PIDFile:       *pidFile,
		ControlSocket: *control,
		Systemd:       &tableflip.SystemdOptions{FdStore: true},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	// Upgrade on SIGHUP. Upgrade blocks until the new generation is ready,
	// or returns why it is not.
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for range sig {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
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
