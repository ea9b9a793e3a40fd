package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

// sampleServerCommand is the hidden command that runs the built-in sample
// server. check runs its own executable with it, so that "go run
// ./cmd/tableflip check" needs nothing else; the Upgrader re-runs the same
// command line for every new generation.
const sampleServerCommand = "sample-server"

// sampleServer is a small HTTP server written the way the README tells
// users to write theirs: signals before New, Listen, Ready, drain on Exit.
func sampleServer(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(sampleServerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "HTTP `address` to listen on")
	tlsAddr := fs.String("tls-addr", "", "HTTPS `address` to listen on (needs -cert and -key)")
	certFile := fs.String("cert", "", "TLS certificate `file`")
	keyFile := fs.String("key", "", "TLS key `file`")
	pidFile := fs.String("pidfile", "", "PID `file`, written when ready")
	addrFile := fs.String("addrfile", "", "`file` to write the listening addresses to, one a line, before ready")
	drainTimeout := fs.Duration("drain-timeout", 10*time.Second, "how long the old generation may drain")
	control := fs.String("control", "", "control socket `path` (tableflip upgrade, tableflip status)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("pid", os.Getpid())
	if err := serveSample(log, *addr, *tlsAddr, *certFile, *keyFile, *pidFile, *addrFile, *control, *drainTimeout); err != nil {
		log.Error("sample server", "err", err)
		return 1
	}
	return 0
}

func serveSample(log *slog.Logger, addr, tlsAddr, certFile, keyFile, pidFile, addrFile, control string, drainTimeout time.Duration) error {
	// SIGTERM and SIGINT stop gracefully, SIGHUP upgrades: both handled
	// from before New on, as the README shows.
	stopped, unnotify := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer unnotify()
	upg, err := tableflip.New(tableflip.Options{
		PIDFile:       pidFile,
		ControlSocket: control,
		UpgradeSignal: syscall.SIGHUP,
		Logger:        log,
	})
	if err != nil {
		return err
	}
	defer upg.Stop()
	go func() {
		<-stopped.Done()
		upg.Stop()
	}()

	pid := strconv.Itoa(os.Getpid())
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Pid", pid)
		fmt.Fprintf(w, "hello from pid %s, read %d bytes\n", pid, n)
	})

	// One http.Server behind a drain.Server serves both listeners; drain
	// is what makes the old generation lose nothing (see package drain).
	srv := drain.NewServer(&http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}, drain.Options{})

	var addrs []string
	serve := func(addr string, tls bool) error {
		ln, err := upg.Listen("tcp", addr)
		if err != nil {
			return err
		}
		addrs = append(addrs, ln.Addr().String())
		go func() {
			var err error
			if tls {
				err = srv.ServeTLS(ln, certFile, keyFile)
			} else {
				err = srv.Serve(ln)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				log.Error("serve", "err", err)
			}
		}()
		return nil
	}
	if err := serve(addr, false); err != nil {
		return err
	}
	if tlsAddr != "" {
		if err := serve(tlsAddr, true); err != nil {
			return err
		}
	}
	if addrFile != "" {
		if err := writeFileAtomic(addrFile, addrs); err != nil {
			return err
		}
	}
	if err := upg.Ready(); err != nil {
		return err
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	stats, err := srv.Drain(ctx)
	if stats.Cut() > 0 {
		log.Warn("drain cut connections", "cut_new", stats.CutNew, "cut_active", stats.CutActive)
	}
	return err
}

func writeFileAtomic(path string, lines []string) error {
	var b []byte
	for _, l := range lines {
		b = append(b, l+"\n"...)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".addr*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
