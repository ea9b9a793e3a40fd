package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/systemd"
	"golang.org/x/sys/unix"
)

// notifySocket is the NOTIFY_SOCKET the supervisor gives the program: an
// abstract datagram socket (nothing in the file system to clean up) with
// SO_PASSCRED, so that each message carries the sender's pid, checked by
// the kernel. The supervisor heeds only the generations' own processes,
// as systemd does with NotifyAccess=main.
type notifySocket struct {
	// FD is kept for a re-execution; conn reads.
	FD   int
	Name string // "@tableflip-run/…", as in NOTIFY_SOCKET
	conn *net.UnixConn
}

// notifyMsg is one datagram: the sender's pid and its assignments, in
// order ("READY=1", "STATUS=…").
type notifyMsg struct {
	pid    int
	fields []string
}

// value returns the value of key in m, and whether m assigns it.
func (m notifyMsg) value(key string) (string, bool) {
	for _, f := range m.fields {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

func newNotifySocket() (*notifySocket, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	var b [8]byte
	rand.Read(b[:])
	name := "@tableflip-run/" + strconv.Itoa(os.Getpid()) + "/" + hex.EncodeToString(b[:])
	// An abstract name starts with a NUL byte, written as @.
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("notify socket %s: %w", name, err)
	}
	return openNotifySocket(fd, name)
}

// openNotifySocket reads from fd, which it keeps.
func openNotifySocket(fd int, name string) (*notifySocket, error) {
	d, err := dup.FD(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(d), "notify")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &notifySocket{FD: fd, Name: name, conn: c.(*net.UnixConn)}, nil
}

// read delivers the messages until the socket is closed. Descriptors
// sent with a message (FDSTORE=1) are closed: the fd store is the
// supervisor's business, not its generations'.
func (n *notifySocket) read(deliver func(notifyMsg)) {
	buf := make([]byte, systemd.MaxMessageSize+1)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*16))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		pid := 0
		msgs, _ := unix.ParseSocketControlMessage(oob[:noob])
		for _, m := range msgs {
			if cred, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(cred.Pid)
			}
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		}
		if pid == 0 || nb == 0 || nb > systemd.MaxMessageSize {
			continue // systemd drops what it cannot attribute or parse
		}
		var fields []string
		for _, line := range strings.Split(string(buf[:nb]), "\n") {
			if line != "" {
				fields = append(fields, line)
			}
		}
		deliver(notifyMsg{pid: pid, fields: fields})
	}
}

// close stops read; FD stays open for a re-execution, closed with
// closeFD.
func (n *notifySocket) close() { n.conn.Close() }

func (n *notifySocket) closeFD() { unix.Close(n.FD) }
