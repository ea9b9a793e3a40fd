package supervisor

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/proctree"
	"golang.org/x/sys/unix"
)

// # Readiness without READY=1
//
// A probe cannot just connect: the socket is shared, and while the new
// generation starts, the old one accepts from the same queue and would
// answer for it. So a probe connects, waits until some process has
// accepted the connection, and asks the kernel which socket that is
// (sock_diag, looked up by the connection's four addresses: it costs the
// same whatever else the host holds); it counts only if that socket is
// among the new generation's descriptors (its process's or a
// descendant's: a pre-forking server accepts in its workers). A
// connection that another generation accepted is closed and the probe
// tries again.

const (
	// probePause separates two probes.
	probePause = 5 * time.Millisecond
	// acceptPoll is how often a probe looks whether its connection has
	// been accepted.
	acceptPoll = time.Millisecond
)

// probe returns nil once the generation whose processes tree lists has
// accepted a connection to addr (tcp) and, with u set, answered a GET of
// u with a status below 400; or ctx.Err().
func probe(ctx context.Context, addr string, u *urlTarget, tree func() []int) error {
	var d net.Dialer
	for {
		err := probeOnce(ctx, &d, addr, u, tree)
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.NewTimer(probePause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// urlTarget is what an HTTP probe asks for.
type urlTarget struct {
	host, path string
}

var errNotOurs = errors.New("accepted by another process")

func probeOnce(ctx context.Context, d *net.Dialer, addr string, u *urlTarget, tree func() []int) error {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	tick := time.NewTicker(acceptPoll)
	defer tick.Stop()
	for {
		ino, waiting, err := acceptedInode(remote, local)
		if err != nil {
			return err
		}
		if !waiting {
			if ino == 0 || !holds(tree(), ino) {
				return errNotOurs
			}
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if u == nil {
		return nil
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tableflip-run\r\nConnection: close\r\n\r\n", u.path, u.host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// acceptedInode looks up the server's side of the TCP connection from
// client to server: waiting is set while nobody has accepted it (it is
// in the listening socket's queue); otherwise ino is the inode of the
// socket that accepted it, or 0 if it is closed already.
func acceptedInode(server, client *net.TCPAddr) (ino uint32, waiting bool, err error) {
	family := unix.AF_INET
	if server.IP.To4() == nil {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, false, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)

	// struct nlmsghdr, then struct inet_diag_req_v2 (linux/inet_diag.h).
	const hdrLen, reqLen = unix.SizeofNlMsghdr, 56
	msg := make([]byte, hdrLen+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], 1)
	req := msg[hdrLen:]
	req[0], req[1] = byte(family), unix.IPPROTO_TCP
	ne.PutUint32(req[4:], ^uint32(0)) // every state
	putSockID(req[8:], server, client)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, false, fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 1024)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, false, fmt.Errorf("sock_diag: %w", err)
	}
	if n < hdrLen {
		return 0, false, errors.New("sock_diag: short answer")
	}
	switch ne.Uint16(buf[4:]) {
	case unix.NLMSG_ERROR:
		if n >= hdrLen+4 && int32(ne.Uint32(buf[hdrLen:])) == -int32(unix.ENOENT) {
			return 0, false, nil // gone: closed by whoever took it
		}
		return 0, false, fmt.Errorf("sock_diag: error %d", -int32(ne.Uint32(buf[hdrLen:])))
	case unix.SOCK_DIAG_BY_FAMILY:
	default:
		return 0, false, errors.New("sock_diag: unexpected answer")
	}
	// struct inet_diag_msg: family, state, timer, retrans, id (48
	// bytes), expires, rqueue, wqueue, uid, inode.
	m := buf[hdrLen:n]
	if len(m) < 72 {
		return 0, false, errors.New("sock_diag: short answer")
	}
	state := m[1]
	if state == tcpListen || binary.BigEndian.Uint16(m[6:]) != uint16(client.Port) {
		// No such connection: the lookup fell back to the listener.
		return 0, false, nil
	}
	ino = ne.Uint32(m[68:])
	// An established connection without a socket inode waits in the
	// accept queue; one that is closing has lost its socket.
	return ino, ino == 0 && state == tcpEstablished, nil
}

// TCP states (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpListen      = 10
)

// putSockID writes struct inet_diag_sockid for the connection whose local
// end is src: ports and addresses in network order, no interface, any
// cookie.
func putSockID(b []byte, src, dst *net.TCPAddr) {
	binary.BigEndian.PutUint16(b[0:], uint16(src.Port))
	binary.BigEndian.PutUint16(b[2:], uint16(dst.Port))
	putIP(b[4:20], src.IP)
	putIP(b[20:36], dst.IP)
	binary.NativeEndian.PutUint32(b[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	binary.NativeEndian.PutUint32(b[44:], ^uint32(0))
}

func putIP(b []byte, ip net.IP) {
	if v4 := ip.To4(); v4 != nil {
		copy(b, v4)
		return
	}
	copy(b, ip.To16())
}

// holds reports whether one of pids has the socket of inode ino open.
func holds(pids []int, ino uint32) bool {
	want := "socket:[" + strconv.FormatUint(uint64(ino), 10) + "]"
	for _, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && link == want {
				return true
			}
		}
	}
	return false
}

// processTree lists pid and its descendants, from /proc's children lists:
// it reads the generation's own processes, nothing else on the host.
func processTree(pid int) []int {
	pids := []int{pid}
	for i := 0; i < len(pids) && len(pids) < 4096; i++ {
		pids = append(pids, proctree.Children(pids[i])...)
	}
	return pids
}
