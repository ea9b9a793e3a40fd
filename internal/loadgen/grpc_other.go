//go:build !go1.24

package loadgen

import (
	"errors"
	"net"
	"net/url"
)

// grpcClientFactory refuses: HTTP/2 without TLS, which gRPC's insecure
// credentials speak, came to net/http's client in Go 1.24.
func grpcClientFactory(*url.URL, Options, *net.Dialer) (func(int) client, error) {
	return nil, errors.New("loadgen: mode grpc needs a program built with Go 1.24 or later")
}
