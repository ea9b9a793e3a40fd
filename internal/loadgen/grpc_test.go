//go:build go1.24

package loadgen

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"
)

// grpcServer answers unary calls over HTTP/2 without TLS, as a gRPC
// server does; answer writes the response to a call whose request
// message was want.
func grpcServer(t *testing.T, want []byte, answer func(w http.ResponseWriter)) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		frame := append([]byte{0, 0, 0, 0, byte(len(want))}, want...)
		switch {
		case err != nil && r.Context().Err() != nil:
			return // given up by the client at the load's limit
		case r.ProtoMajor != 2 || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/grpc" || r.Header.Get("TE") != "trailers":
			t.Errorf("call %s %s, content-type %q, te %q", r.Proto, r.Method, r.Header.Get("Content-Type"), r.Header.Get("TE"))
		case err != nil || !bytes.Equal(b, frame):
			t.Errorf("request % x, %v; want % x", b, err, frame)
		}
		answer(w)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL + "/grpc.health.v1.Health/Check"
}

func TestGRPC(t *testing.T) {
	ok := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		w.Write([]byte{0, 0, 0, 0, 2, 0x08, 0x01}) // HealthCheckResponse{status: SERVING}
		w.Header().Set("Grpc-Status", "0")
	}
	for _, tt := range []struct {
		name   string
		answer func(w http.ResponseWriter)
		want   Outcome
	}{
		{"ok", ok, OK},
		{"unavailable", func(w http.ResponseWriter) {
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			w.Write([]byte{0, 0, 0, 0, 0})
			w.Header().Set("Grpc-Status", "14")
			w.Header().Set("Grpc-Message", "draining")
		}, Status},
		{"trailers only", func(w http.ResponseWriter) {
			w.Header().Set("Grpc-Status", "12")
			w.WriteHeader(http.StatusOK)
		}, Status},
		{"not a message", func(w http.ResponseWriter) {
			w.Header().Set("Trailer", "Grpc-Status")
			w.Write([]byte{0, 0, 0, 0, 9, 1})
			w.Header().Set("Grpc-Status", "0")
		}, Malformed},
		{"http error", func(w http.ResponseWriter) { w.WriteHeader(http.StatusUnsupportedMediaType) }, Status},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte("hi")
			url := grpcServer(t, body, tt.answer)
			res, err := Run(context.Background(), Options{URL: url, Mode: ModeGRPC, Conns: 1, MaxRequests: 5, Body: body})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Records) != 5 {
				t.Fatalf("%d records, want 5", len(res.Records))
			}
			for i, r := range res.Records {
				if r.Outcome != tt.want {
					t.Errorf("call %d: %v (%s), want %v", i+1, r.Outcome, res.Examples[r.Outcome], tt.want)
				}
			}
		})
	}
}
