package tableflip

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/peercred"
)

// # The control socket
//
// With Options.ControlSocket set, the live generation answers requests on a
// Unix socket at that path, so that whoever triggers an upgrade (an
// operator, a deploy script, systemd's ExecReload) learns whether it
// worked, and why not. "tableflip upgrade" and "tableflip status" are its
// command-line clients; ControlCall is the Go one.
//
// The socket is passed on through every upgrade like any listener, so the
// same path always reaches the live generation. A new generation answers on
// it once its Ready has succeeded (before that, its parent still answers);
// the old one stops when Exit closes. A final Stop removes the file.
//
// Protocol, version 1 (ControlVersion). A client connects, writes one
// request as a line of JSON, and reads one response, a line of JSON; then
// the server closes the connection.
//
//	→ {"v":1,"cmd":"status"}
//	← {"v":1,"ok":true,"status":{"pid":4242,"generation":3,"parent_pid":4100,
//	    "started":"2025-01-02T15:04:05Z","ready":true,"upgrading":false,
//	    "exiting":false,"upgrades_attempted":2,"upgrades_succeeded":1,
//	    "upgrades_failed":1,"last_failure":{"reason":"child_exited",...},
//	    "last_failure_at":"…","draining":[4100]}}
//	→ {"v":1,"cmd":"upgrade"}
//	← {"v":1,"ok":true,"upgrade":{"pid":4300,"generation":4,"seconds":0.21}}
//	← {"v":1,"ok":false,"error":{"reason":"child_exited","message":"…",
//	    "pid":4300,"exit_code":1}}
//
// "upgrade" blocks until the outcome, up to Options.UpgradeTimeout plus a
// few seconds to stop a new generation that failed. A client that goes
// away meanwhile does not cancel the upgrade. Fields may be added to
// requests and responses within a version; a reader ignores those it does
// not know. Error answers carry a machine-readable Reason (the Reason*
// constants) and a message for people.
//
// # Security
//
// The socket file is created with mode 0600, or 0660 and the group
// Options.ControlSocketGroup. The mode is set before the file appears
// at the path (it is bound under a temporary name and renamed). Whatever
// the mode, the server checks every connection's peer credentials
// (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS and FreeBSD): only this
// process's effective uid, root, and with ControlSocketGroup that group's
// members are served; anyone else is answered with ReasonPermission. Where
// the platform cannot tell who the peer is, every request is refused with
// ReasonNotSupported.
//
// A request line longer than MaxControlRequest bytes, malformed JSON, an
// unknown version or command, or a request not sent within ten seconds is
// answered with an error (ReasonBadRequest, ReasonTimeout), never a hang.

// ControlVersion is the version of the control protocol this package
// speaks.
const ControlVersion = 1

// MaxControlRequest is the longest request line the control socket reads.
const MaxControlRequest = 4096

const (
	// controlWriteTimeout bounds how long a client has to read the
	// answer.
	controlWriteTimeout = 10 * time.Second
	// controlStopGrace is how long a request under way when the server
	// stops has to arrive.
	controlStopGrace = time.Second
	// maxControlResponse bounds what ControlCall reads.
	maxControlResponse = 1 << 20
)

// controlReadTimeout bounds how long a client has to send its request. A
// variable so that the tests need not wait ten seconds.
var controlReadTimeout = 10 * time.Second

// Control commands.
const (
	ControlUpgrade = "upgrade"
	ControlStatus  = "status"
)

// ControlRequest is a request on the control socket.
type ControlRequest struct {
	// V is the protocol version, ControlVersion.
	V int `json:"v"`
	// Cmd is ControlUpgrade or ControlStatus.
	Cmd string `json:"cmd"`
}

// ControlResponse is the answer to a ControlRequest.
type ControlResponse struct {
	V  int  `json:"v"`
	OK bool `json:"ok"`
	// Error is set when OK is false.
	Error *ControlError `json:"error,omitempty"`
	// Upgrade is set by a successful upgrade.
	Upgrade *UpgradeOutcome `json:"upgrade,omitempty"`
	// Status answers ControlStatus.
	Status *Stats `json:"status,omitempty"`
}

// ControlCall sends cmd to the control socket at path and returns the
// answer. An error is returned if the socket could not be reached or the
// answer read, or ctx ended first; a refusal or a failed upgrade is an
// answer with OK false, whose Error can be returned as an error.
func ControlCall(ctx context.Context, path, cmd string) (*ControlResponse, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("tableflip: control socket: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	req, _ := json.Marshal(ControlRequest{V: ControlVersion, Cmd: cmd})
	if _, err := c.Write(append(req, '\n')); err != nil {
		return nil, controlCallError(ctx, err)
	}
	line, err := bufio.NewReader(io.LimitReader(c, maxControlResponse)).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		return nil, controlCallError(ctx, err)
	}
	var resp ControlResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("tableflip: control socket: malformed answer: %w", err)
	}
	if !resp.OK && resp.Error == nil {
		resp.Error = &ControlError{Reason: ReasonFailed, Message: "tableflip: control socket: error answer without a reason"}
	}
	return &resp, nil
}

func controlCallError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("connection closed without an answer")
	}
	return fmt.Errorf("tableflip: control socket: %w", err)
}

// controlServer serves the control socket.
type controlServer struct {
	u    *Upgrader
	ln   net.Listener
	path string
	// gid is the group let in besides this uid and root, or -1.
	gid      int
	stopping chan struct{}
	stopOnce sync.Once

	mu    sync.Mutex // guards conns
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// initControl takes (or creates) the control socket, with
// Options.ControlSocket. It serves at once in a first generation, and
// after Ready in a new one.
func (u *Upgrader) initControl() error {
	path := u.opts.ControlSocket
	if path == "" {
		return nil
	}
	gid, err := lookupGroup(u.opts.ControlSocketGroup)
	if err != nil {
		return fmt.Errorf("tableflip: control socket group: %w", err)
	}
	ln, err := u.Fds.ListenWithCallback("unix", path, func(network, addr string) (net.Listener, error) {
		return listenControl(addr, gid)
	})
	if err != nil {
		return fmt.Errorf("tableflip: control socket: %w", err)
	}
	s := &controlServer{
		u:        u,
		ln:       ln,
		path:     path,
		gid:      gid,
		stopping: make(chan struct{}),
		conns:    make(map[net.Conn]struct{}),
	}
	u.ctl = s
	s.wg.Add(1)
	go s.serve()
	return nil
}

// stopControl stops serving the control socket and waits for the answers
// under way. The run loop calls it as it returns, before Exit closes, so
// that the client that asked for a successful upgrade gets its answer
// before the program exits.
func (u *Upgrader) stopControl() {
	if u.ctl != nil {
		u.ctl.stop()
	}
}

func (s *controlServer) stop() {
	s.stopOnce.Do(func() {
		close(s.stopping)
		s.ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			// Ends a request still being read, after a grace: a
			// deadline of now would fail a request that is already
			// in the buffer, which is answered instead (an upgrade
			// with ErrUpgraded or ErrStopped). Answers being
			// written have their own deadline.
			c.SetReadDeadline(time.Now().Add(controlStopGrace))
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
}

func (s *controlServer) serve() {
	defer s.wg.Done()
	if s.u.parent != nil {
		// Until this generation is ready, its parent answers.
		select {
		case <-s.u.readyC:
		case <-s.stopping:
			return
		}
	}
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.stopping:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				// The program closed it through Fds? Only this
				// server holds it; nothing more to serve.
				return
			}
			s.u.log.Warn("tableflip: control socket accept", "error", err)
			// Out of descriptors and the like: don't spin.
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-s.stopping:
				t.Stop()
				return
			}
			continue
		}
		s.mu.Lock()
		// Accepted as the server stops: answered like the requests
		// under way, not closed unread (the client would see a
		// reset, not a refusal).
		stopping := closed(s.stopping)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
		if stopping {
			return
		}
	}
}

func (s *controlServer) handle(c net.Conn) {
	resp := s.answer(c)
	resp.V = ControlVersion
	resp.OK = resp.Error == nil
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(ControlResponse{V: ControlVersion, Error: &ControlError{Reason: ReasonFailed, Message: err.Error()}})
	}
	c.SetWriteDeadline(time.Now().Add(controlWriteTimeout))
	if _, err := c.Write(append(b, '\n')); err != nil {
		s.u.log.Warn("tableflip: control socket: can't answer", "error", err)
	}
}

func (s *controlServer) answer(c net.Conn) *ControlResponse {
	// The credentials first: a peer that may not ask learns nothing,
	// and its request is not parsed. It is still read, so that closing
	// the connection does not reset it before the refusal is read.
	credErr := s.checkPeer(c)
	// Under the lock that stop holds as it cuts the reads under way:
	// a request read once the server stops has only the grace.
	s.mu.Lock()
	wait := controlReadTimeout
	if closed(s.stopping) {
		wait = controlStopGrace
	}
	c.SetReadDeadline(time.Now().Add(wait))
	s.mu.Unlock()
	req, reqErr := readControlRequest(c)
	if credErr != nil {
		return &ControlResponse{Error: credErr}
	}
	if reqErr != nil {
		return &ControlResponse{Error: reqErr}
	}
	switch req.Cmd {
	case ControlStatus:
		st := s.u.Stats()
		return &ControlResponse{Status: &st}
	case ControlUpgrade:
		s.u.log.Info("tableflip: upgrade requested on the control socket")
		if err := s.upgrade(); err != nil {
			return &ControlResponse{Error: controlError(err)}
		}
		out := s.u.stats.lastUpgrade()
		return &ControlResponse{Upgrade: &out}
	}
	return &ControlResponse{Error: &ControlError{Reason: ReasonBadRequest, Message: fmt.Sprintf("tableflip: control socket: unknown command %q (want %q or %q)", req.Cmd, ControlUpgrade, ControlStatus)}}
}

// upgrade is Upgrade, but gives up once the control socket stops: the run
// loop that would answer has returned and waits for this server.
func (s *controlServer) upgrade() error {
	return s.u.requestUpgrade(s.stopping)
}

func (s *controlServer) checkPeer(c net.Conn) *ControlError {
	cred, err := peercred.Get(c)
	if err != nil {
		reason := ReasonPermission
		if errors.Is(err, peercred.ErrNotSupported) {
			reason = ReasonNotSupported
		}
		return &ControlError{Reason: reason, Message: "tableflip: control socket: can't check who is asking: " + err.Error()}
	}
	if err := allowPeer(cred, os.Geteuid(), s.gid); err != nil {
		s.u.log.Warn("tableflip: control socket: refused", "uid", cred.UID, "peer_pid", cred.PID)
		return &ControlError{Reason: ReasonPermission, Message: err.Error()}
	}
	return nil
}

// allowPeer decides whether the peer may use the control socket of a
// process running as euid, with group gid (or -1) let in too.
func allowPeer(cred peercred.Cred, euid, gid int) error {
	if cred.UID == euid || cred.UID == 0 {
		return nil
	}
	if gid >= 0 && inGroup(cred, gid) {
		return nil
	}
	who := "uid " + strconv.Itoa(euid) + " and root"
	if gid >= 0 {
		who += " and group " + strconv.Itoa(gid)
	}
	return fmt.Errorf("tableflip: control socket: permission denied: uid %d may not use it (only %s may)", cred.UID, who)
}

// readControlRequest reads and parses one request line, within the read
// deadline set on c.
func readControlRequest(c net.Conn) (*ControlRequest, *ControlError) {
	r := bufio.NewReaderSize(io.LimitReader(c, MaxControlRequest+1), 512)
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// Keep reading up to the limit to tell long from too long.
		var more []byte
		more, err = r.ReadBytes('\n')
		line = append(append([]byte{}, line...), more...)
	}
	switch {
	case len(bytes.TrimRight(line, "\r\n")) > MaxControlRequest:
		return nil, &ControlError{Reason: ReasonBadRequest, Message: fmt.Sprintf("tableflip: control socket: request longer than %d bytes", MaxControlRequest)}
	case err != nil && !errors.Is(err, io.EOF):
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, &ControlError{Reason: ReasonTimeout, Message: fmt.Sprintf("tableflip: control socket: no request line within %s", controlReadTimeout)}
		}
		return nil, &ControlError{Reason: ReasonBadRequest, Message: "tableflip: control socket: reading the request: " + err.Error()}
	case len(bytes.TrimSpace(line)) == 0:
		return nil, &ControlError{Reason: ReasonBadRequest, Message: "tableflip: control socket: empty request"}
	}
	var req ControlRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return nil, &ControlError{Reason: ReasonBadRequest, Message: "tableflip: control socket: malformed request: " + err.Error()}
	}
	if req.V != ControlVersion {
		return nil, &ControlError{Reason: ReasonBadRequest, Message: fmt.Sprintf("tableflip: control socket: protocol version %d; this process speaks %d", req.V, ControlVersion)}
	}
	return &req, nil
}

// listenControl creates the control socket at path with mode 0600, or
// 0660 and group gid. The socket is bound under a temporary name in the
// same directory, given its mode and group, and only then renamed to path,
// so that the file is never at path with a wider mode.
func listenControl(path string, gid int) (net.Listener, error) {
	if err := checkStaleSocket(path); err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if gid >= 0 {
		mode = 0o660
	}
	tmp := filepath.Join(filepath.Dir(path), ".tableflip-"+strconv.Itoa(os.Getpid())+".sock")
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &controlListener{ln, &net.UnixAddr{Name: path, Net: "unix"}}, nil
}

// controlListener reports the path it was renamed to as its address,
// which is what Fds passes it on under.
type controlListener struct {
	*net.UnixListener
	addr *net.UnixAddr
}

func (l *controlListener) Addr() net.Addr { return l.addr }

// checkStaleSocket fails if something else is at path: a file that is not
// a socket, or a socket that some process serves. A socket nobody serves
// is left behind by a process that died, and is replaced.
func checkStaleSocket(path string) error {
	_, err := staleSocket("unix", path)
	return err
}

// lookupGroup returns the gid of a group name or number, or -1 for "".
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

// inGroup reports whether the peer belongs to group gid.
func inGroup(cred peercred.Cred, gid int) bool {
	if cred.GID == gid || slices.Contains(cred.Groups, gid) {
		return true
	}
	if cred.Groups != nil {
		return false
	}
	u, err := user.LookupId(strconv.Itoa(cred.UID))
	if err != nil {
		return false
	}
	ids, err := u.GroupIds()
	return err == nil && slices.Contains(ids, strconv.Itoa(gid))
}
