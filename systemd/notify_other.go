//go:build !unix

package systemd

func checkSocketAddr(socket string) error {
	if socket == "" {
		return ErrNoSocket
	}
	return ErrNotSupported
}

func send(string, []byte, []int) error { return ErrNotSupported }
