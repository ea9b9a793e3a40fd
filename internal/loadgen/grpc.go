//go:build go1.24

package loadgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// grpcClientFactory makes ModeGRPC clients, which share one transport.
func grpcClientFactory(u *url.URL, o Options, dialer *net.Dialer) (func(int) client, error) {
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: o.Conns,
		DisableCompression:  true,
		TLSClientConfig:     o.tlsConfig(),
	}
	var p http.Protocols
	if u.Scheme == "https" {
		p.SetHTTP2(true)
		tr.ForceAttemptHTTP2 = true
	} else {
		// Prior knowledge, as grpc-go's insecure credentials speak it.
		p.SetUnencryptedHTTP2(true)
	}
	tr.Protocols = &p
	hc := &http.Client{Transport: tr, Timeout: o.Timeout}
	// One length-prefixed, uncompressed message.
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(o.Body)))
	body = append(body, o.Body...)
	return func(int) client { return &grpcClient{hc: hc, tr: tr, url: u.String(), body: body} }, nil
}

// grpcClient makes unary gRPC calls.
type grpcClient struct {
	hc   *http.Client
	tr   *http.Transport
	url  string
	body []byte
}

func (c *grpcClient) do(ctx context.Context) (Outcome, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(c.body))
	if err != nil {
		return Other, err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := c.hc.Do(req)
	if err != nil {
		return classify(err, Other), err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return cutShort(err), err
	case resp.ProtoMajor != 2:
		return Protocol, errors.New("answered with " + resp.Proto)
	case resp.StatusCode != http.StatusOK:
		return Status, errors.New(resp.Status)
	}
	// A call that fails at once answers with headers only.
	status, msg := resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
	if status == "" {
		status, msg = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	}
	switch {
	case status != "0":
		return Status, fmt.Errorf("grpc-status %q: %s", status, msg)
	case len(b) < 5 || b[0] != 0 || int(binary.BigEndian.Uint32(b[1:5])) != len(b)-5:
		return Malformed, fmt.Errorf("answer of %d bytes is not one uncompressed gRPC message", len(b))
	}
	return OK, nil
}

func (c *grpcClient) close() { c.tr.CloseIdleConnections() }
