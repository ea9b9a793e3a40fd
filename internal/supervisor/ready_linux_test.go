package supervisor

import (
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAcceptedInode: the server's side of a connection is found by its
// addresses, waiting while it is in the queue, then as the socket of the
// process that accepted it; processTree and holds find that process.
func TestAcceptedInode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server, client := c.RemoteAddr().(*net.TCPAddr), c.LocalAddr().(*net.TCPAddr)
	ino, waiting, err := acceptedInode(server, client)
	if err != nil || !waiting || ino != 0 {
		t.Fatalf("before accept: inode %d, waiting %t, %v; want waiting", ino, waiting, err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ino, waiting, err = acceptedInode(server, client)
	if err != nil || waiting || ino == 0 {
		t.Fatalf("after accept: inode %d, waiting %t, %v; want the accepted socket's", ino, waiting, err)
	}
	tree := processTree(os.Getpid())
	if !slices.Contains(tree, os.Getpid()) || !holds(tree, ino) {
		t.Errorf("holds(%v, %d) is false: this process accepted it", tree, ino)
	}
	if holds([]int{os.Getppid()}, ino) {
		t.Errorf("the parent process is said to hold the socket")
	}
	// A connection that does not exist falls back to nothing.
	other := &net.TCPAddr{IP: client.IP, Port: 1}
	if ino, waiting, err := acceptedInode(server, other); err != nil || waiting || ino != 0 {
		t.Errorf("no such connection: inode %d, waiting %t, %v; want none", ino, waiting, err)
	}
	sc.Close()
	if ino, waiting, err := acceptedInode(server, client); err != nil || waiting || holds(tree, ino) && ino != 0 {
		t.Errorf("after the server closed it: inode %d, waiting %t, %v; want no socket", ino, waiting, err)
	}
}

// TestNotifySocket: messages carry the sender's pid; fds sent with one
// are closed, not kept.
func TestNotifySocket(t *testing.T) {
	n, err := newNotifySocket()
	if err != nil {
		t.Fatal(err)
	}
	defer n.closeFD()
	got := make(chan notifyMsg, 1)
	go n.read(func(m notifyMsg) { got <- m })
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	rights := unix.UnixRights(int(pw.Fd()))
	if err := unix.Sendmsg(c, []byte("READY=1\nSTATUS=fine\n"), rights, &unix.SockaddrUnix{Name: n.Name}, 0); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	m := <-got
	n.close()
	// Every write end is closed once the supervisor's copy is: end of
	// file, not a read that waits.
	pr.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pr.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("reading the pipe whose write end came with the message: %v, want EOF (the copy closed)", err)
	}
	if m.pid != os.Getpid() {
		t.Errorf("sender pid %d, want %d", m.pid, os.Getpid())
	}
	if v, ok := m.value("STATUS"); !ok || v != "fine" {
		t.Errorf("STATUS=%q (%t), want fine", v, ok)
	}
	if _, ok := m.value("READY"); !ok || len(m.fields) != 2 {
		t.Errorf("fields %q, want READY=1 and STATUS=fine", m.fields)
	}
}
