package loadgen

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
)

// A server on the files of WriteLoopbackCert is trusted by the client
// config it returns, on every loopback name, and speaks HTTP/2.
func TestWriteLoopbackCert(t *testing.T) {
	certFile, keyFile, clientTLS, err := WriteLoopbackCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, certFile, keyFile) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, host := range []string{"127.0.0.1", "localhost"} {
		res, err := Run(context.Background(), Options{
			URL:         "https://" + net.JoinHostPort(host, port) + "/",
			Mode:        ModeHTTP2,
			Conns:       1,
			MaxRequests: 3,
			TLSConfig:   clientTLS,
		})
		if err != nil {
			t.Fatal(err)
		}
		if f := res.Failures(); len(f) != 0 || len(res.Records) == 0 {
			t.Errorf("%s: %d records, failures %v, e.g. %v", host, len(res.Records), f, res.Examples)
		}
	}
}
