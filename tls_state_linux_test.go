//go:build linux

package tableflip

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

const (
	certDirEnv     = "TABLEFLIP_TEST_CERT_DIR"
	ticketStateVer = 1
)

func init() { registerHelper("tlsserver", helperTLSServer) }

// helperTLSServer serves TLS and hands its session ticket key to the next
// generation, so that clients resume their sessions across upgrades. In
// mode "forget-keys" a new generation starts with a key of its own.
func helperTLSServer() int {
	say := func(format string, args ...any) {
		fmt.Printf("event %d %s\n", os.Getpid(), fmt.Sprintf(format, args...))
	}
	var key [32]byte
	upg, err := New(Options{WriteState: func(w io.Writer) error {
		_, err := w.Write(append([]byte{ticketStateVer}, key[:]...))
		return err
	}})
	if err != nil {
		say("new-error %v", err)
		return 1
	}
	defer upg.Stop()
	if err := loadTicketKey(upg, &key); err != nil || readMode() == "forget-keys" {
		if err != nil && !errors.Is(err, ErrNoState) {
			say("state-error %v", err)
			return 1
		}
		rand.Read(key[:])
	}

	dir := os.Getenv(certDirEnv)
	cert, err := tls.LoadX509KeyPair(dir+"/cert.pem", dir+"/key.pem")
	if err != nil {
		say("cert-error %v", err)
		return 1
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.SetSessionTicketKeys([][32]byte{key})

	cmdLn, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 1
	}
	tlsLn, err := upg.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 1
	}
	if err := upg.Ready(); err != nil {
		say("ready-error %v", err)
		return 1
	}
	fmt.Printf("ready %d %s %s\n", os.Getpid(), cmdLn.Addr(), tlsLn.Addr())

	var conns connServer
	conns.serve(cmdLn, func(c net.Conn) { handleCommands(upg, cmdLn, c) })
	conns.serve(tlsLn, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			return
		}
		fmt.Fprintf(tc, "%d resumed=%t\n", os.Getpid(), tc.ConnectionState().DidResume)
	})
	<-upg.Exit()
	cmdLn.Close()
	tlsLn.Close()
	conns.wait()
	say("exiting")
	return 0
}

// loadTicketKey reads the key the previous generation handed on, checking
// the version of the format first.
func loadTicketKey(upg *Upgrader, key *[32]byte) error {
	r, err := upg.State()
	if err != nil {
		return err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(b) != 1+len(key) || b[0] != ticketStateVer {
		return fmt.Errorf("ticket key state of %d bytes, version %d: not one this program reads", len(b), b[0])
	}
	copy(key[:], b[1:])
	return nil
}

// TestTLSSessionResumesAcrossUpgrade: a client that connected to one
// generation resumes its TLS session with the next, because the session
// ticket key was handed on as state; with a fresh key it cannot.
func TestTLSSessionResumesAcrossUpgrade(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, client, err := loadgen.WriteLoopbackCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.Rename(certFile, dir+"/cert.pem")
	os.Rename(keyFile, dir+"/key.pem")
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	s := startServer(t, serverConfig{env: []string{helper("tlsserver"), certDirEnv + "=" + dir}})
	tlsAddr := s.udp

	ask := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", tlsAddr, client)
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("TLS read: %v", err)
		}
		return strings.TrimSpace(line)
	}
	if got, want := ask(), fmt.Sprintf("%d resumed=false", s.pid); got != want {
		t.Fatalf("first connection: %q, want %q", got, want)
	}
	pid := s.upgrade()
	if got, want := ask(), fmt.Sprintf("%d resumed=true", pid); got != want {
		t.Errorf("after an upgrade that handed the ticket key on: %q, want %q", got, want)
	}

	s.setMode("forget-keys")
	pid = s.upgrade()
	if got, want := ask(), fmt.Sprintf("%d resumed=false", pid); got != want {
		t.Errorf("after an upgrade with a fresh key: %q, want %q (the test could not fail otherwise)", got, want)
	}
}
