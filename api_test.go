package tableflip

import (
	"context"
	"net"
	"os"
	"testing"
	"time"
)

// TestCompatibleSurface fails to compile if any part of cloudflare/tableflip
// v1.2.3's API is missing or has another signature.
func TestCompatibleSurface(t *testing.T) {
	var (
		_ func(Options) (*Upgrader, error) = New
		_ time.Duration                    = DefaultUpgradeTimeout
		_ error                            = ErrNotSupported
		_                                  = Options{UpgradeTimeout: time.Second, PIDFile: "", ListenConfig: &net.ListenConfig{}}

		u                                                                                            = &Upgrader{Fds: &Fds{}}
		_ func() error                                                                               = u.Ready
		_ func() <-chan struct{}                                                                     = u.Exit
		_ func()                                                                                     = u.Stop
		_ func() error                                                                               = u.Upgrade
		_ func(context.Context) error                                                                = u.WaitForParent
		_ func() bool                                                                                = u.HasParent
		_ *Fds                                                                                       = u.Fds
		f                                                                                            = &Fds{}
		_ func(string, string) (net.Listener, error)                                                 = f.Listen
		_ func(string, string, func(string, string) (net.Listener, error)) (net.Listener, error)     = f.ListenWithCallback
		_ func(string, string) (net.Listener, error)                                                 = f.Listener
		_ func(string, string, Listener) error                                                       = f.AddListener
		_ func(string, string) (net.PacketConn, error)                                               = f.ListenPacket
		_ func(string, string, func(string, string) (net.PacketConn, error)) (net.PacketConn, error) = f.ListenPacketWithCallback
		_ func(string, string) (net.PacketConn, error)                                               = f.PacketConn
		_ func(string, string, PacketConn) error                                                     = f.AddPacketConn
		_ func(string, string) (net.Conn, error)                                                     = f.Conn
		_ func(string, string, Conn) error                                                           = f.AddConn
		_ func(string) (*os.File, error)                                                             = f.File
		_ func() ([]*os.File, error)                                                                 = f.Files
		_ func(string, *os.File) error                                                               = f.AddFile
	)
	var _ Listener = (*net.TCPListener)(nil)
	var _ Listener = (*net.UnixListener)(nil)
	var _ PacketConn = (*net.UDPConn)(nil)
	var _ PacketConn = (*net.UnixConn)(nil)
	var _ Conn = (*net.TCPConn)(nil)
	if DefaultUpgradeTimeout != time.Minute {
		t.Errorf("DefaultUpgradeTimeout = %v, want a minute as in cloudflare/tableflip", DefaultUpgradeTimeout)
	}
}
