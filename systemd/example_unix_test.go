//go:build unix

package systemd_test

import (
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"

	"github.com/seed589fcc9d/tableflip/systemd"
)

// The messages as systemd receives them, here from a socket standing in
// for its notification socket.
func ExampleNotifier() {
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "notify")
	manager, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		log.Fatal(err)
	}
	defer manager.Close()
	os.Setenv("NOTIFY_SOCKET", sock) // as systemd sets it
	defer os.Unsetenv("NOTIFY_SOCKET")

	n, err := systemd.NewNotifier()
	if err != nil {
		log.Fatal(err)
	}
	n.Ready("serving")
	n.MainPIDReady(4242, "upgraded")
	n.Stopping("")
	buf := make([]byte, systemd.MaxMessageSize)
	for range 3 {
		k, _ := manager.Read(buf)
		fmt.Printf("%q\n", buf[:k])
	}
	// Output:
	// "READY=1\nSTATUS=serving"
	// "MAINPID=4242\nREADY=1\nSTATUS=upgraded"
	// "STOPPING=1"
}
