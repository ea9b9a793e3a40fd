package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// linePrefix is how every line or datagram of client i begins; a
// sequence number follows.
func linePrefix(body []byte, i int) string {
	return string(body) + " " + strconv.Itoa(i) + "-"
}

// lineClient speaks the line protocol over TCP: ModeLine with a new
// connection per exchange, ModeLongLived on one held connection.
type lineClient struct {
	addr    string
	dialer  *net.Dialer
	prefix  string
	timeout time.Duration
	hold    bool
	seq     uint64

	held     *heldLine // ModeLongLived: the open connection, or nil
	byServer bool      // the last failure was the server ending held
}

// heldLine is one long-lived connection and the goroutine that reads its
// answers, so that an end the server brings while the client waits
// between exchanges is seen, and timed, when it happens.
type heldLine struct {
	conn   net.Conn
	echoes chan string   // lines read; unbuffered, so none is read past an end
	ended  chan struct{} // closed by the reader when the connection ends
	quit   chan struct{} // closed by the client when it gives the connection up

	// Written by the reader before it closes ended.
	at      time.Time
	err     error
	partial bool // part of a line had arrived
}

func (c *lineClient) next() string {
	c.seq++
	return c.prefix + strconv.FormatUint(c.seq, 10) + "\n"
}

func (c *lineClient) do(ctx context.Context) (Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	c.byServer = false
	if !c.hold {
		return c.once(ctx)
	}
	if c.held == nil {
		conn, err := c.dialer.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return classify(err, Connect), err
		}
		h := &heldLine{conn: conn, echoes: make(chan string), ended: make(chan struct{}), quit: make(chan struct{})}
		go h.read()
		c.held = h
	}
	h := c.held
	line := c.next()
	deadline, _ := ctx.Deadline()
	h.conn.SetWriteDeadline(deadline)
	if _, err := io.WriteString(h.conn, line); err != nil {
		o := classify(err, Write)
		c.byServer = o == Write || o == Reset
		c.drop()
		return o, err
	}
	select {
	case got := <-h.echoes:
		if got != line {
			c.drop()
			return Malformed, fmt.Errorf("sent %q, got %q back", line, got)
		}
		return OK, nil
	case <-h.ended:
		c.byServer = true
		c.drop()
		return lineEnd(h.err, h.partial), h.err
	case <-ctx.Done():
		c.drop()
		return classify(ctx.Err(), Other), ctx.Err()
	}
}

// once is one ModeLine exchange on a connection of its own.
func (c *lineClient) once(ctx context.Context) (Outcome, error) {
	conn, err := c.dialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return classify(err, Connect), err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	line := c.next()
	if _, err := io.WriteString(conn, line); err != nil {
		return classify(err, Write), err
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	switch {
	case err != nil:
		return lineEnd(err, got != ""), err
	case got != line:
		return Malformed, fmt.Errorf("sent %q, got %q back", line, got)
	}
	return OK, nil
}

// lineEnd names the failure of a connection that ended before a whole
// answer arrived; partial reports that part of it had.
func lineEnd(err error, partial bool) Outcome {
	if !partial {
		return classify(err, Other)
	}
	return cutShort(err)
}

func (h *heldLine) read() {
	defer close(h.ended)
	br := bufio.NewReader(h.conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			h.at, h.err, h.partial = time.Now(), err, line != ""
			return
		}
		select {
		case h.echoes <- line:
		case <-h.quit:
			return
		}
	}
}

func (c *lineClient) endedIdle() (time.Time, error, bool) {
	h := c.held
	if h == nil {
		return time.Time{}, nil, false
	}
	select {
	case <-h.ended:
	default:
		return time.Time{}, nil, false
	}
	c.drop()
	err := h.err
	if h.partial {
		err = fmt.Errorf("part of a line the client did not ask for, then %w", err)
	}
	return h.at, err, true
}

func (c *lineClient) endedByServer() bool { return c.byServer }

// drop gives the held connection up. The reader's error from the close
// is not the server's doing, and is never looked at.
func (c *lineClient) drop() {
	if h := c.held; h != nil {
		close(h.quit)
		h.conn.Close()
		c.held = nil
	}
}

func (c *lineClient) close() { c.drop() }

// datagramClient sends one datagram at a time on a connected UDP socket
// and waits for the same datagram back.
type datagramClient struct {
	addr    string
	dialer  *net.Dialer
	prefix  string
	timeout time.Duration
	seq     uint64

	conn net.Conn
	buf  []byte
}

func (c *datagramClient) do(ctx context.Context) (Outcome, error) {
	// Only the timeout ends the wait, never the end of the load (see
	// finishesInFlight): a datagram is lost only if it is never answered.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	if c.conn == nil {
		conn, err := c.dialer.DialContext(ctx, "udp", c.addr)
		if err != nil {
			return classify(err, Connect), err
		}
		c.conn = conn
		c.buf = make([]byte, MaxDatagram+64)
	}
	c.seq++
	msg := []byte(c.prefix + strconv.FormatUint(c.seq, 10))
	deadline, _ := ctx.Deadline()
	c.conn.SetDeadline(deadline)
	if _, err := c.conn.Write(msg); err != nil {
		c.close()
		return classify(err, Write), err
	}
	for {
		n, err := c.conn.Read(c.buf)
		if err != nil {
			o := classify(err, Other)
			if o == Timeout {
				err = fmt.Errorf("no answer to datagram %d within %s", c.seq, c.timeout)
			} else {
				// ECONNREFUSED: nobody had the port when it arrived.
				c.close()
			}
			return o, err
		}
		got := c.buf[:n]
		switch {
		case bytes.Equal(got, msg):
			return OK, nil
		case c.earlier(got):
			// A late answer to a datagram already counted as lost.
			continue
		}
		return Malformed, fmt.Errorf("sent %q, got %q back", msg, got)
	}
}

// earlier reports whether b is one of this client's earlier datagrams.
func (c *datagramClient) earlier(b []byte) bool {
	rest, ok := strings.CutPrefix(string(b), c.prefix)
	if !ok {
		return false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return err == nil && n < c.seq
}

func (c *datagramClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}
