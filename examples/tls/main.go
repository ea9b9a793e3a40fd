// Command tls is an HTTPS server whose clients resume their TLS sessions
// across upgrades: the session ticket keys go from each generation to the
// next in the state (tableflip.Options.WriteState, Upgrader.State), so a
// ticket issued by one generation is taken by the next, and an upgrade
// costs no client a full handshake.
//
// Each generation makes a key of its own for new tickets and keeps the
// last keys it inherited (up to maxKeys) to read older tickets, so that
// keys rotate at every upgrade. A new generation that cannot read the
// state exits: the upgrade fails, and the old one serves on.
//
// Make a certificate and upgrade it:
//
//	go run $(go env GOROOT)/src/crypto/tls/generate_cert.go -host 127.0.0.1
//	go build -o /tmp/tlsserver ./examples/tls
//	/tmp/tlsserver -addr 127.0.0.1:8443 -cert cert.pem -key key.pem -pid-file /tmp/tls.pid &
//	curl -k https://127.0.0.1:8443/        # "pid 1234, resumed false"
//	kill -HUP $(cat /tmp/tls.pid)          # upgrade
//
// or with tableflip check, which loads it with HTTP/1.1 and HTTP/2
// clients:
//
//	tableflip check -url https://127.0.0.1:8443/ -pidfile /tmp/tls.pid \
//		-- /tmp/tlsserver -addr 127.0.0.1:8443 -cert cert.pem -key key.pem -pid-file /tmp/tls.pid
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
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
	addr     = flag.String("addr", "127.0.0.1:8443", "`address` to listen on")
	pidFile  = flag.String("pid-file", "", "PID `file` to write")
	certFile = flag.String("cert", "cert.pem", "certificate `file` (PEM)")
	keyFile  = flag.String("key", "key.pem", "private key `file` (PEM)")
)

// The state: stateVersion, the number of keys, then the keys, newest
// first.
const (
	stateVersion = 1
	maxKeys      = 3
)

func main() {
	flag.Parse()
	// Set once, before Ready; WriteState reads it during upgrades.
	var keys [][32]byte
	upg := newUpgrader(tableflip.Options{
		PIDFile:    *pidFile,
		WriteState: func(w io.Writer) error { return writeKeys(w, keys) },
	})
	defer upg.Stop()

	inherited, err := readKeys(upg)
	if err != nil {
		log.Fatal(err)
	}
	var fresh [32]byte
	if _, err := rand.Read(fresh[:]); err != nil {
		log.Fatal(err)
	}
	keys = append([][32]byte{fresh}, inherited...)
	keys = keys[:min(len(keys), maxKeys)]

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.SetSessionTicketKeys(keys)

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := drain.NewServer(&http.Server{Handler: http.HandlerFunc(hello), TLSConfig: cfg}, drain.Options{})
	go srv.ServeTLS(ln, "", "")

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Drain(ctx)
}

// hello says which generation answered, and whether the client resumed
// its TLS session.
func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "pid %d, resumed %t\n", os.Getpid(), r.TLS != nil && r.TLS.DidResume)
}

func writeKeys(w io.Writer, keys [][32]byte) error {
	b := []byte{stateVersion, byte(len(keys))}
	for _, k := range keys {
		b = append(b, k[:]...)
	}
	_, err := w.Write(b)
	return err
}

// readKeys returns the keys the previous generation handed on: none on a
// first start, an error for state this program cannot read.
func readKeys(upg *tableflip.Upgrader) ([][32]byte, error) {
	r, err := upg.State()
	if errors.Is(err, tableflip.ErrNoState) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("ticket keys: %w", err)
	}
	if len(b) < 2 || b[0] != stateVersion || len(b) != 2+32*int(b[1]) {
		return nil, fmt.Errorf("ticket keys: %d bytes of state, not version %d", len(b), stateVersion)
	}
	keys := make([][32]byte, b[1])
	for i := range keys {
		copy(keys[i][:], b[2+32*i:])
	}
	return keys, nil
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
