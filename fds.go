package tableflip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/internal/handover"
)

// Listener can be shared between processes.
type Listener interface {
	net.Listener
	syscall.Conn
}

// PacketConn can be shared between processes.
type PacketConn interface {
	net.PacketConn
	syscall.Conn
}

// Conn can be shared between processes.
type Conn interface {
	net.Conn
	syscall.Conn
}

// key names a socket or file: its kind (a handover.Kind* constant), its
// network, and the address asked for (or the name of a file).
type key struct {
	kind    byte
	network string
	addr    string
}

func (k key) String() string {
	switch k.kind {
	case handover.KindFile:
		return "file " + k.addr
	case handover.KindListener:
		return "listener " + k.network + " " + k.addr
	case handover.KindPacketConn:
		return "packet conn " + k.network + " " + k.addr
	default:
		return "conn " + k.network + " " + k.addr
	}
}

// isUnixFile reports whether k is a Unix socket with a file in the file
// system (abstract sockets have none).
func (k key) isUnixFile() bool {
	switch {
	case k.kind == handover.KindListener && (k.network == "unix" || k.network == "unixpacket"):
	case k.kind == handover.KindPacketConn && k.network == "unixgram":
	default:
		return false
	}
	return k.addr != "" && k.addr[0] != '@' && k.addr[0] != 0
}

// entry is a socket or file that the next generation will inherit.
//
// Either the registry owns a descriptor (fd >= 0): one it inherited and
// nobody has asked for yet, or a duplicate taken by an Add method or for
// File. Or the program owns the socket (fd < 0, owner set): a socket that
// Listen, ListenPacket, Conn or their kin handed out. The registry keeps no
// duplicate of those, so that closing them really closes the socket; it
// duplicates them only for the moment of an upgrade.
type entry struct {
	key
	// bound is the address the socket is bound to where that differs
	// from the address asked for, as for "127.0.0.1:0".
	bound string
	fd    int
	owner syscall.Conn
	// taken is set when the entry leaves the inherited set.
	taken bool
	// fromParent is set on what the parent passed: a socket the parent
	// still serves on.
	fromParent bool
	// held is set on a Unix socket whose file belongs to systemd (socket
	// activation or the fd store): it is never removed. It is passed on
	// with the entry.
	held bool

	// An inherited socket is made into its net object once (see
	// prepare): obj and convErr are set when conv is done.
	conv    sync.Once
	obj     io.Closer
	convErr error
}

// Fds holds the sockets and files that are passed from one generation to
// the next.
//
// A socket that Fds hands out (Listen, ListenPacket, Listener, PacketConn,
// Conn) belongs to the program: closing it closes the socket, and a socket
// the program has closed is not passed on. The Add methods duplicate what
// they are given, so the caller may close its copy at once.
type Fds struct {
	mu sync.Mutex
	// inherited from the parent and not asked for yet, by every address
	// an entry answers to. Two sockets may share a name (two listeners on
	// "127.0.0.1:0"): they are handed out in the order they were passed.
	inherited map[key][]*entry
	// used is what the next generation inherits, in order.
	used []*entry
	lc   *net.ListenConfig
	log  *slog.Logger

	// extra hands out what the parent did not pass: the sockets
	// systemd passed (see SystemdOptions), or nil.
	extra source

	// conns are the connections the listeners accepted (see conns.go).
	conns connSet

	// gate is closed once the listeners inherited from a parent may
	// accept (see listener).
	gate     chan struct{}
	gateOnce sync.Once
}

// source hands out sockets that the parent did not pass: systemd's (see
// SystemdOptions). Fds calls it with f.mu held.
type source interface {
	// take returns the entry for k, or nil.
	take(k key) *entry
	// close closes what nobody took.
	close()
}

// alwaysOpen is a gate that is always open.
var alwaysOpen = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// openGate lets the inherited listeners accept.
func (f *Fds) openGate() {
	f.gateOnce.Do(func() { close(f.gate) })
}

func newFds(inherited []*entry, lc *net.ListenConfig, log *slog.Logger) *Fds {
	if lc == nil {
		lc = &net.ListenConfig{}
	}
	f := &Fds{
		inherited: make(map[key][]*entry, len(inherited)),
		lc:        lc,
		log:       log,
		gate:      make(chan struct{}),
	}
	for _, e := range inherited {
		e.fromParent = true
		for _, k := range e.names() {
			f.inherited[k] = append(f.inherited[k], e)
		}
	}
	prepare(inherited)
	return f
}

// prepare makes the net objects of inherited sockets in the background,
// on every CPU, while the program initialises: for thousands of sockets
// that is most of the time a new generation takes to get ready, and the
// program's Listen calls then find them made.
func prepare(entries []*entry) {
	workers := min(runtime.GOMAXPROCS(0), len(entries))
	for w := range workers {
		go func() {
			for i := w; i < len(entries); i += workers {
				entries[i].convert()
			}
		}()
	}
}

// convert makes the net object of an inherited socket, which then holds
// the descriptor. Files stay descriptors.
func (e *entry) convert() {
	e.conv.Do(func() {
		var fromFile func(*os.File) (io.Closer, error)
		switch e.kind {
		case handover.KindListener:
			fromFile = func(f *os.File) (io.Closer, error) { return net.FileListener(f) }
		case handover.KindPacketConn:
			fromFile = func(f *os.File) (io.Closer, error) { return net.FilePacketConn(f) }
		case handover.KindConn:
			fromFile = func(f *os.File) (io.Closer, error) { return net.FileConn(f) }
		default:
			return
		}
		// os.NewFile leaves a non-blocking descriptor non-blocking,
		// and so does Fd on such a File: the socket the parent still
		// serves on never turns blocking.
		file := os.NewFile(uintptr(e.fd), e.key.String())
		e.fd = -1
		e.obj, e.convErr = fromFile(file)
		file.Close()
		if e.convErr != nil {
			e.convErr = fmt.Errorf("tableflip: can't use inherited %s: %w", e.key, e.convErr)
		}
	})
}

// object hands the net object of an inherited socket to the program.
func object[T any](e *entry) (T, error) {
	var zero T
	e.convert()
	if e.convErr != nil {
		return zero, e.convErr
	}
	v, ok := e.obj.(T)
	if !ok {
		e.obj.Close()
		return zero, fmt.Errorf("tableflip: inherited %s is a %T", e.key, e.obj)
	}
	e.obj = nil
	return v, nil
}

// names are the keys an entry is found by.
func (e *entry) names() []key {
	if e.bound == "" {
		return []key{e.key}
	}
	bound := e.key
	bound.addr = e.bound
	return []key{e.key, bound}
}

// take removes and returns the first inherited entry for k, found by the
// address it was asked for or by the address it is bound to.
func (f *Fds) take(k key) *entry {
	list := f.inherited[k]
	// An entry taken by its other name stays in this list until it
	// comes to the front: thousands of sockets under one name are taken
	// in linear time.
	for len(list) > 0 && list[0].taken {
		list = list[1:]
	}
	if len(list) == 0 {
		delete(f.inherited, k)
		if f.extra != nil {
			return f.extra.take(k)
		}
		return nil
	}
	e := list[0]
	e.taken = true
	f.inherited[k] = list[1:]
	return e
}

// setSource makes s the source of sockets that the parent did not pass.
func (f *Fds) setSource(s source) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.extra = s
}

// inheritedKeys lists the names under which the parent passed sockets and
// files.
func (f *Fds) inheritedKeys() []key {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keys []key
	for _, list := range f.inherited {
		for _, e := range list {
			keys = append(keys, e.key)
		}
	}
	return keys
}

// use records e as passed on.
func (f *Fds) use(e *entry) {
	f.used = append(f.used, e)
}

// replace records e as passed on instead of whatever was passed on under
// its key, which is closed.
func (f *Fds) replace(e *entry) {
	f.used = slices.DeleteFunc(f.used, func(o *entry) bool {
		if o.key == e.key {
			o.close()
			return true
		}
		return false
	})
	f.use(e)
}

// dup duplicates the descriptor of e for a handover. Even a descriptor the
// registry owns is duplicated: it is sent after f.mu is released, and a
// concurrent Add under the same name would close the original.
func (e *entry) dup() (int, error) {
	if e.fd >= 0 {
		return dup.FD(e.fd)
	}
	return dup.Conn(e.owner)
}

func (e *entry) close() {
	if e.fd >= 0 {
		dup.Close(e.fd)
		e.fd = -1
	}
}

// Listen returns a listener inherited from the parent process, or creates a
// new one. An inherited listener is found by the address it was created
// with (such as "127.0.0.1:0") and by the address it is bound to.
func (f *Fds) Listen(network, addr string) (net.Listener, error) {
	return f.ListenWithCallback(network, addr, f.newListener)
}

func (f *Fds) newListener(network, addr string) (net.Listener, error) {
	ln, err := f.lc.Listen(context.Background(), network, addr)
	if err != nil && f.removedStale(network, addr, err) {
		ln, err = f.lc.Listen(context.Background(), network, addr)
	}
	return ln, err
}

// removedStale removes the socket file at addr if err says it is in the
// way and no process serves it: a generation killed before it could clean
// up left it, and it must not stop the next start. It reports whether it
// removed one.
func (f *Fds) removedStale(network, addr string, err error) bool {
	k := key{handover.KindListener, network, addr}
	if network == "unixgram" {
		k.kind = handover.KindPacketConn
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !k.isUnixFile() {
		return false
	}
	stale, serr := staleSocket(network, addr)
	if serr != nil || !stale {
		return false
	}
	f.log.Warn("tableflip: removing a socket file that nobody serves", "path", addr)
	return os.Remove(addr) == nil
}

// staleSocket reports whether path is a socket file that no process
// serves (connecting to it is refused); an error says what else is there.
func staleSocket(network, path string) (bool, error) {
	info, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if info.Mode()&os.ModeSocket == 0 {
		return false, fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout(network, path, time.Second)
	if err == nil {
		c.Close()
		return false, fmt.Errorf("%s is served by another process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

// ListenWithCallback returns a listener inherited from the parent process,
// or calls callback to create a new one. The listener callback returns
// must implement Listener; it is closed, and an error returned, if not.
func (f *Fds) ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	ln, err := f.listenerLocked(network, addr)
	if ln != nil || err != nil {
		return ln, err
	}
	ln, err = callback(network, addr)
	if err != nil {
		return nil, fmt.Errorf("tableflip: can't create listener %s %s: %w", network, addr, err)
	}
	sln, ok := ln.(Listener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("tableflip: %T does not implement tableflip.Listener", ln)
	}
	f.own(key{handover.KindListener, network, addr}, sln, ln.Addr())
	return newListener(sln, alwaysOpen, &f.conns), nil
}

// Listener returns the listener inherited from the parent process for
// network and addr, or nil if there is none. The program owns the
// listener: closing it closes the socket.
func (f *Fds) Listener(network, addr string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listenerLocked(network, addr)
}

func (f *Fds) listenerLocked(network, addr string) (net.Listener, error) {
	k := key{handover.KindListener, network, addr}
	e := f.take(k)
	if e == nil {
		return nil, nil
	}
	ln, err := object[Listener](e)
	if err != nil {
		return nil, err
	}
	f.claim(e, ln)
	gate := alwaysOpen
	if e.fromParent {
		gate = f.gate
	}
	return newListener(ln, gate, &f.conns), nil
}

// AddListener passes a copy of ln on to the next generation under network
// and addr, replacing any listener already known by them. The caller may
// close ln afterwards; the copy is closed when this generation exits.
func (f *Fds) AddListener(network, addr string, ln Listener) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addLocked(key{handover.KindListener, network, addr}, ln)
}

// ListenPacket returns a packet conn inherited from the parent process, or
// creates a new one.
func (f *Fds) ListenPacket(network, addr string) (net.PacketConn, error) {
	return f.ListenPacketWithCallback(network, addr, f.newPacketConn)
}

func (f *Fds) newPacketConn(network, addr string) (net.PacketConn, error) {
	pc, err := f.lc.ListenPacket(context.Background(), network, addr)
	if err != nil && f.removedStale(network, addr, err) {
		pc, err = f.lc.ListenPacket(context.Background(), network, addr)
	}
	return pc, err
}

// ListenPacketWithCallback returns a packet conn inherited from the parent
// process, or calls callback to create a new one. The conn callback
// returns must implement PacketConn; it is closed, and an error returned,
// if not.
func (f *Fds) ListenPacketWithCallback(network, addr string, callback func(network, addr string) (net.PacketConn, error)) (net.PacketConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	pc, err := f.packetConnLocked(network, addr)
	if pc != nil || err != nil {
		return pc, err
	}
	pc, err = callback(network, addr)
	if err != nil {
		return nil, fmt.Errorf("tableflip: can't create packet conn %s %s: %w", network, addr, err)
	}
	spc, ok := pc.(PacketConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("tableflip: %T does not implement tableflip.PacketConn", pc)
	}
	f.own(key{handover.KindPacketConn, network, addr}, spc, pc.LocalAddr())
	return pc, nil
}

// PacketConn returns the packet conn inherited from the parent process for
// network and addr, or nil if there is none. The program owns the conn:
// closing it closes the socket.
func (f *Fds) PacketConn(network, addr string) (net.PacketConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.packetConnLocked(network, addr)
}

func (f *Fds) packetConnLocked(network, addr string) (net.PacketConn, error) {
	k := key{handover.KindPacketConn, network, addr}
	e := f.take(k)
	if e == nil {
		return nil, nil
	}
	pc, err := object[PacketConn](e)
	if err != nil {
		return nil, err
	}
	f.claim(e, pc)
	return pc, nil
}

// AddPacketConn passes a copy of conn on to the next generation under
// network and addr. The caller may close conn afterwards.
func (f *Fds) AddPacketConn(network, addr string, conn PacketConn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addLocked(key{handover.KindPacketConn, network, addr}, conn)
}

// Conn returns the connection inherited from the parent process for
// network and addr, or nil if there is none.
//
// The program owns the connection: closing it closes the socket, and the
// peer sees the connection end. (cloudflare/tableflip kept a duplicate
// open until the process exited, so the peer never saw the close.) A
// connection that is still open when this generation upgrades is passed
// on again.
func (f *Fds) Conn(network, addr string) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	k := key{handover.KindConn, network, addr}
	e := f.take(k)
	if e == nil {
		return nil, nil
	}
	c, err := object[Conn](e)
	if err != nil {
		return nil, err
	}
	f.claim(e, c)
	return c, nil
}

// AddConn passes a copy of conn on to the next generation under network
// and addr. The caller may close conn afterwards.
func (f *Fds) AddConn(network, addr string, conn Conn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addLocked(key{handover.KindConn, network, addr}, conn)
}

// File returns a duplicate of the file inherited from the parent process
// under name, or nil if there is none. The caller owns and closes the
// returned file; the file is passed on to the next generation still.
// The descriptor may be in blocking mode or not, as the parent left it.
func (f *Fds) File(name string) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	e := f.take(key{handover.KindFile, "", name})
	if e == nil {
		return nil, nil
	}
	f.use(e)
	return dup.File(e.fd, name)
}

// Files returns duplicates of all files inherited from the parent process
// that have not been asked for yet, in no particular order. The caller
// owns and closes them.
func (f *Fds) Files() ([]*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	var inherited []key
	for k := range f.inherited {
		if k.kind == handover.KindFile {
			inherited = append(inherited, k)
		}
	}
	var files []*os.File
	for _, k := range inherited {
		for e := f.take(k); e != nil; e = f.take(k) {
			f.use(e)
			file, err := dup.File(e.fd, k.addr)
			if err != nil {
				for _, file := range files {
					file.Close()
				}
				return nil, err
			}
			files = append(files, file)
		}
	}
	return files, nil
}

// AddFile passes a copy of file on to the next generation under name. The
// caller may close file afterwards.
func (f *Fds) AddFile(name string, file *os.File) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addLocked(key{handover.KindFile, "", name}, file)
}

func (f *Fds) addLocked(k key, c syscall.Conn) error {
	if ul, ok := c.(interface{ SetUnlinkOnClose(bool) }); ok {
		ul.SetUnlinkOnClose(false)
	}
	fd, err := dup.Conn(c)
	if err != nil {
		return fmt.Errorf("tableflip: can't duplicate %s: %w", k, err)
	}
	f.replace(&entry{key: k, fd: fd, bound: boundAddr(k, c)})
	return nil
}

// own records a new socket that the program owns.
func (f *Fds) own(k key, c syscall.Conn, bound net.Addr) {
	e := &entry{key: k, fd: -1}
	if bound != nil && bound.String() != k.addr {
		e.bound = bound.String()
	}
	f.claim(e, c)
}

// claim records that the program owns the socket of e, which keeps the
// names it was passed on with.
func (f *Fds) claim(e *entry, c syscall.Conn) {
	if ul, ok := c.(interface{ SetUnlinkOnClose(bool) }); ok {
		// The socket file belongs to every generation; only a final
		// Stop removes it.
		ul.SetUnlinkOnClose(false)
	}
	e.owner = c
	f.use(e)
}

func boundAddr(k key, c syscall.Conn) string {
	var a net.Addr
	switch c := c.(type) {
	case net.Listener:
		a = c.Addr()
	case net.PacketConn:
		a = c.LocalAddr()
	}
	if a == nil || a.String() == k.addr {
		return ""
	}
	return a.String()
}

// passed is what an upgrade hands to the next generation.
type passed struct {
	entries []handover.Entry
	fds     []int
	// dups are the descriptors duplicated for the upgrade only.
	dups []int
}

func (p *passed) close() {
	for _, fd := range p.dups {
		dup.Close(fd)
	}
}

// collect lists what the next generation inherits, in duplicates that
// p.close closes. Sockets the program has closed are dropped. With hold,
// the Unix socket files of what is listed become systemd's (see entry.held):
// it is about to keep them in its fd store.
func (f *Fds) collect(hold bool) (*passed, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	p := &passed{
		entries: make([]handover.Entry, 0, len(f.used)),
		fds:     make([]int, 0, len(f.used)),
	}
	var dupErr error
	f.used = slices.DeleteFunc(f.used, func(e *entry) bool {
		fd, err := e.dup()
		if errors.Is(err, dup.ErrClosed) {
			f.log.Debug("tableflip: not passing on a closed socket", "socket", e.key.String())
			return true
		}
		if err != nil {
			if dupErr == nil {
				dupErr = fmt.Errorf("tableflip: can't duplicate %s: %w", e.key, err)
			}
			return false
		}
		if hold && e.isUnixFile() {
			e.held = true
		}
		p.dups = append(p.dups, fd)
		p.entries = append(p.entries, handover.Entry{Kind: e.kind, Network: e.network, Addr: e.addr, Bound: e.bound, Held: e.held})
		p.fds = append(p.fds, fd)
		return false
	})
	if dupErr != nil {
		p.close()
		return nil, dupErr
	}
	return p, nil
}

// closeInherited closes what the parent passed on and nobody asked for.
// It returns the socket files of such Unix sockets, which nobody will
// serve on once this generation has taken over: the caller removes them
// then, not before (the parent serves on them until it is told).
func (f *Fds) closeInherited() (stale []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, list := range f.inherited {
		for _, e := range list {
			if e.taken {
				continue
			}
			if k == e.key && k.isUnixFile() && !e.held {
				stale = append(stale, k.addr)
			}
			e.conv.Do(func() {}) // waits for a conversion under way
			if e.obj != nil {
				e.obj.Close()
				e.obj = nil
			}
			e.close()
		}
	}
	if f.extra != nil {
		f.extra.close()
	}
	clear(f.inherited)
	return stale
}

// closeUsed closes the registry's descriptors: after a successful upgrade,
// the next generation has its own.
func (f *Fds) closeUsed(final bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.used {
		if final && e.isUnixFile() && !e.held {
			unlinkUnixSocket(e.addr)
		}
		e.close()
	}
	f.used = nil
}

// unlinkUnixSocket removes path if it is a socket.
func unlinkUnixSocket(path string) {
	if runtime.GOOS == "linux" && strings.HasPrefix(path, "@") {
		return
	}
	info, err := os.Lstat(path)
	if err != nil || info.Mode()&os.ModeSocket == 0 {
		return
	}
	os.Remove(path)
}
