//go:build unix

package handover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Supported reports whether this platform can pass descriptors to a new
// process: every unix can, over Unix sockets.
const Supported = true

// Conn is one end of the handover socket.
type Conn struct {
	*net.UnixConn
}

// Pair returns the parent's end of a new handover socket and the file to
// pass to the child. Both ends are close-on-exec; the child's end is
// passed by naming it in the child's descriptor table, which clears that.
func Pair() (*Conn, *os.File, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, fmt.Errorf("handover: socketpair: %w", err)
	}
	c, err := NewConn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "tableflip-handover"), nil
}

// NewConn makes a Conn of a descriptor and takes ownership of it: fd is
// made close-on-exec at once, and closed, whatever the outcome.
func NewConn(fd int) (*Conn, error) {
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "tableflip-handover")
	defer f.Close()
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("handover: descriptor %d is not a socket: %w", fd, err)
	}
	if typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("handover: descriptor %d is a socket of type %d, not a stream", fd, typ)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handover: descriptor %d: %w", fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("handover: descriptor %d is a %s socket, not a Unix socket", fd, c.LocalAddr().Network())
	}
	return &Conn{uc}, nil
}

// WriteFrame writes one frame.
func (c *Conn) WriteFrame(typ byte, payload []byte) error {
	_, err := c.Write(AppendFrame(nil, typ, payload))
	return err
}

// SendFDs sends fds in as many FrameFDs frames as it takes.
func (c *Conn) SendFDs(fds []int) error {
	for len(fds) > 0 {
		n := min(len(fds), MaxFDsPerFrame)
		frame := AppendFrame(nil, FrameFDs, binary.BigEndian.AppendUint16(nil, uint16(n)))
		written, _, err := c.WriteMsgUnix(frame, unix.UnixRights(fds[:n]...), nil)
		if err != nil {
			return fmt.Errorf("handover: sending %d descriptors: %w", n, err)
		}
		if written < len(frame) {
			if _, err := c.Write(frame[written:]); err != nil {
				return fmt.Errorf("handover: sending %d descriptors: %w", n, err)
			}
		}
		fds = fds[n:]
	}
	return nil
}

// ReceiveFDs reads FrameFDs frames until it has want descriptors. The
// descriptors arrive close-on-exec. On error, every descriptor received so
// far is closed.
func (c *Conn) ReceiveFDs(want int) (fds []int, err error) {
	defer func() {
		if err != nil {
			closeAll(fds)
			fds = nil
		}
	}()
	fds = make([]int, 0, want)
	buf := make([]byte, headerSize+2)
	oob := make([]byte, unix.CmsgSpace(MaxFDsPerFrame*4))
	for len(fds) < want {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		arrived := 0
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			arrived = len(got)
			if perr != nil {
				return fds, perr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fds, malformed("end of stream after %d of %d descriptors", len(fds), want)
			}
			return fds, fmt.Errorf("handover: receiving descriptors: %w", err)
		}
		if n == 0 {
			return fds, malformed("end of stream after %d of %d descriptors", len(fds), want)
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fds, malformed("descriptors were truncated (is the descriptor limit too low?)")
		}
		if n < len(buf) {
			if _, err := io.ReadFull(c, buf[n:]); err != nil {
				return fds, malformed("descriptor frame is truncated")
			}
		}
		typ, length, err := parseHeader(buf)
		if err != nil {
			return fds, err
		}
		if typ == FrameError {
			msg, err := readPayload(c, length-2, buf[headerSize:])
			if err != nil {
				return fds, err
			}
			return fds, &PeerError{Message: string(msg)}
		}
		if typ != FrameFDs || length != 2 {
			return fds, malformed("expected a descriptor frame, got frame %q of %d bytes", typ, length)
		}
		count := int(binary.BigEndian.Uint16(buf[headerSize:]))
		if count != arrived || len(fds) > want {
			return fds, malformed("descriptor frame names %d descriptors and carried %d; %d of %d received", count, arrived, len(fds), want)
		}
	}
	if len(fds) != want {
		return fds, malformed("received %d descriptors, expected %d", len(fds), want)
	}
	return fds, nil
}

// readPayload returns the payload of a frame whose first bytes, head, were
// already read.
func readPayload(r io.Reader, rest int, head []byte) ([]byte, error) {
	if rest < 0 {
		return head[:len(head)+rest], nil
	}
	b := make([]byte, len(head)+rest)
	copy(b, head)
	if _, err := io.ReadFull(r, b[len(head):]); err != nil {
		return nil, malformed("error frame is truncated")
	}
	return b, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, malformed("control message: %v", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range got {
			// Platforms without MSG_CMSG_CLOEXEC get it here, as
			// early as the runtime allows.
			unix.CloseOnExec(fd)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// ReadFrame reads the next frame. A FrameError from the peer is returned
// as a *PeerError.
func (c *Conn) ReadFrame() (typ byte, payload []byte, err error) {
	typ, payload, err = ReadFrame(c)
	if err == nil && typ == FrameError {
		return typ, payload, &PeerError{Message: string(payload)}
	}
	return typ, payload, err
}

// PeerPID returns the pid of the process that created the other end of
// the socket fd, where the platform can tell (Linux), and 0 elsewhere or
// if fd is not a connected Unix socket. The kernel records it when the
// pair is made, so it names the parent even after the parent has exited.
func PeerPID(fd int) int { return peerPID(fd) }
