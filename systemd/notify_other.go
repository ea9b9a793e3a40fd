//go:build !unix

package systemd

import "time"

func checkSocketAddr(socket string) error {
	if socket == "" {
		return ErrNoSocket
	}
	return ErrNotSupported
}

func send(string, []byte, []int) error { return ErrNotSupported }

func barrier(*Notifier, time.Duration) error { return ErrNotSupported }
