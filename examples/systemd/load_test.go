//go:build linux

package systemd_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/realsystemd"
)

// requestTimeout bounds one request of the load, connecting included.
const requestTimeout = 10 * time.Second

// load is a request loop against the server inside a System: clients that
// each open a new connection per request, and clients that keep their
// connection alive until the server asks them to close it. No client ever
// retries: every request that does not get its answer counts.
type load struct {
	stopc chan struct{}
	wg    sync.WaitGroup

	mu       sync.Mutex
	ok       int
	refused  int            // connection refused (ECONNREFUSED)
	failed   map[string]int // other failures, by kind
	examples []string       // the first few failures, with their time
	pids     map[int]int    // answers by the pid that sent them
	started  time.Time
	okc      chan struct{} // gets a value, without blocking, at each answer
}

// startLoad starts newConn clients of the first kind and keepAlive of the
// second against addr (host:port on the System's loopback). Each client
// pauses a little between requests so that the upgrades it watches get
// the CPU too.
func startLoad(sys *realsystemd.System, addr string, newConn, keepAlive int) *load {
	l := &load{
		stopc:   make(chan struct{}),
		failed:  map[string]int{},
		pids:    map[int]int{},
		started: time.Now(),
		okc:     make(chan struct{}, 1),
	}
	for i := range newConn + keepAlive {
		keep := i >= newConn
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			if err := sys.InNetns(func() { l.client(addr, keep) }); err != nil {
				l.fail("setns", err)
			}
		}()
	}
	return l
}

// client runs in the System's network namespace (see InNetns): every
// socket it opens is there.
func (l *load) client(addr string, keepAlive bool) {
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		select {
		case <-l.stopc:
			return
		case <-time.After(2 * time.Millisecond): // a pace, not a wait for anything
		}
		if conn == nil {
			c, err := net.DialTimeout("tcp", addr, requestTimeout)
			if err != nil {
				l.fail("connect", err)
				continue
			}
			conn, br = c, bufio.NewReader(c)
		}
		pid, closeConn, err := exchange(conn, br, keepAlive)
		if err != nil {
			l.fail(kind(err), err)
			conn.Close()
			conn = nil
			continue
		}
		l.answer(pid)
		if closeConn || !keepAlive {
			conn.Close()
			conn = nil
		}
	}
}

// exchange sends one GET and reads the answer: "pid N".
func exchange(conn net.Conn, br *bufio.Reader, keepAlive bool) (pid int, closeConn bool, err error) {
	conn.SetDeadline(time.Now().Add(requestTimeout))
	req := "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
	if !keepAlive {
		req = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
	}
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, false, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, fmt.Errorf("read response: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("status %s: %q", resp.Status, body)
	}
	pid, err = parsePID(string(body))
	return pid, resp.Close, err
}

// parsePID reads the README program's answer, "pid N\n".
func parsePID(body string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(body, "pid ")))
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("unexpected answer %q", body)
	}
	return n, nil
}

// kind names a failure for the counts.
func kind(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	}
	return "other"
}

func (l *load) fail(kind string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if kind == "connect" && errors.Is(err, syscall.ECONNREFUSED) {
		l.refused++
	} else {
		l.failed[kind]++
	}
	if len(l.examples) < 5 {
		l.examples = append(l.examples, fmt.Sprintf("at %v: %s: %v", time.Since(l.started).Round(time.Millisecond), kind, err))
	}
}

func (l *load) answer(pid int) {
	l.mu.Lock()
	l.ok++
	l.pids[pid]++
	l.mu.Unlock()
	select {
	case l.okc <- struct{}{}:
	default:
	}
}

// waitAnswers waits until the load has had n more answers, or timeout.
func (l *load) waitAnswers(n int, timeout time.Duration) error {
	deadline := time.After(timeout)
	l.mu.Lock()
	target := l.ok + n
	l.mu.Unlock()
	for {
		l.mu.Lock()
		ok := l.ok
		l.mu.Unlock()
		if ok >= target {
			return nil
		}
		select {
		case <-l.okc:
		case <-deadline:
			return fmt.Errorf("the load had %d of %d more answers in %v (%s)", n-(target-ok), n, timeout, l.result())
		}
	}
}

// loadResult is what a stopped load saw.
type loadResult struct {
	OK, Refused int
	Failed      map[string]int
	Examples    []string
	PIDs        map[int]int
}

// Failures is the number of failed requests, refused ones excluded.
func (r loadResult) Failures() int {
	n := 0
	for _, c := range r.Failed {
		n += c
	}
	return n
}

func (r loadResult) String() string {
	kinds := make([]string, 0, len(r.Failed))
	for k, c := range r.Failed {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, c))
	}
	sort.Strings(kinds)
	s := fmt.Sprintf("%d answered, %d refused, %d failed", r.OK, r.Refused, r.Failures())
	if len(kinds) > 0 {
		s += " (" + strings.Join(kinds, ", ") + ")"
	}
	s += fmt.Sprintf(", by %d pids", len(r.PIDs))
	if len(r.Examples) > 0 {
		s += "; first failures: " + strings.Join(r.Examples, "; ")
	}
	return s
}

func (l *load) result() loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := loadResult{OK: l.ok, Refused: l.refused, Failed: map[string]int{}, PIDs: map[int]int{}}
	for k, v := range l.failed {
		r.Failed[k] = v
	}
	for k, v := range l.pids {
		r.PIDs[k] = v
	}
	r.Examples = append(r.Examples, l.examples...)
	return r
}

// stop stops the clients, lets each finish the request it is in (bounded
// by requestTimeout), and returns what they saw.
func (l *load) stop() loadResult {
	close(l.stopc)
	l.wg.Wait()
	return l.result()
}
