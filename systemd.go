package tableflip

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/dup"
	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/internal/memfd"
	"github.com/seed589fcc9d/tableflip/systemd"
)

// SystemdOptions turn on the Upgrader's systemd integration
// (Options.Systemd). A non-nil zero value enables notifications and socket
// activation; the fd store is opt-in.
//
// Nothing here costs anything outside systemd: without NOTIFY_SOCKET no
// message is sent, and without LISTEN_PID naming this process no socket
// is taken from systemd.
//
// # Notifications
//
// When NOTIFY_SOCKET is set, the Upgrader tells systemd what it does, all
// from the process that is the unit's main process at the time, so that
// NotifyAccess=main suffices (see the systemd package):
//
//   - the first generation's Ready: READY=1 with STATUS=;
//   - an upgrade: RELOADING=1 with MONOTONIC_USEC= when it starts, then
//     EXTEND_TIMEOUT_USEC= (Options.UpgradeTimeout plus the grace before
//     SIGKILL) once the new generation runs; once it is ready, the old
//     generation sends MAINPID=<new pid> and READY=1 in one message, and
//     the new generation is the main process from then on. A failed
//     upgrade ends with READY=1 and a STATUS= naming the failure; an
//     upgrade refused because the previous generation still runs sends
//     RELOADING=1 then READY=1 with STATUS= saying so, which ends a
//     `systemctl reload` at once;
//   - a final Stop: STOPPING=1.
//
// A message that cannot be sent is logged as a warning (Options.Logger);
// it never fails the operation.
//
// This makes Type=notify work without a PID file, and Type=notify-reload
// (systemd 253 or later) make `systemctl reload` wait for the upgrade's
// outcome: the program upgrades on SIGHUP, the default ReloadSignal=.
//
// # Socket activation
//
// On a first start (no parent generation) with LISTEN_PID naming this
// process, the sockets systemd passed (LISTEN_FDS, LISTEN_FDNAMES) are
// taken by New, which removes the variables and makes the sockets
// close-on-exec. Listen and ListenPacket then return such a socket
// instead of creating one, found by, in this order:
//
//  1. the name under which the fd store keeps a socket of that network
//     and address (see below): the very socket asked for before a
//     restart, even one bound to port 0;
//  2. the socket's real address and type, as [systemd.ListenFd.Matches]
//     compares them: Listen("tcp", ":8080") finds a listening TCP socket
//     bound to the unspecified address and port 8080, and
//     Listen("unix", "/run/app.sock") the Unix socket at that path;
//  3. its name (FileDescriptorName= of the socket unit): Listen("tcp",
//     "web") finds a listening TCP socket named web, ListenPacket("udp",
//     "dns") a UDP socket named dns, and File("state") any fd named
//     state. Without such a socket, Listen("tcp", "web") fails as
//     net.Listen would, so a program that also runs without systemd asks
//     by address.
//
// What the program takes is passed on at every later upgrade like any
// other socket, under the network and address it asked for (a socket
// asked for by name is found by its real address too). Sockets systemd
// passed and the program did not ask for are closed by Ready. Unix socket
// files of sockets that systemd holds are never removed, not even by a
// final Stop: systemd still listens on them.
//
// # The fd store
//
// With FdStore set, each generation, once it serves (the first at Ready,
// a later one when its parent has exited, so that systemd takes it as the
// main process), pushes the sockets and files it passes on to the unit's
// fd store (FDSTORE=1), one message per name; the name (FDNAME=) encodes
// the network and address the program asked for. It first removes
// (FDSTOREREMOVE=1) the names that it learnt were stored but that nothing
// uses any more: those of sockets its parent passed or systemd handed
// back that the program did not ask for. systemd ignores an fd it already
// stores, so pushing the same sockets after every upgrade changes
// nothing. After `systemctl restart` or a crash (with Restart=), the next
// first generation gets them back through socket activation (rule 1
// above), and no connection is refused in between (measured under real
// systemd 252 and 254: 0 refused across a restart under load). A
// `systemctl stop` releases the store (see below). Upgrades do not need
// the store: sockets pass from generation to generation directly.
//
// # State in the fd store
//
// With FdStore and Options.WriteState set, a final Stop of the main
// process (not one after a successful upgrade) also writes the state,
// before STOPPING=1, into a memfd that it pushes to the store as
// tableflip.state: the same stream an upgrade sends, end marker included.
// If the writer fails, the error is logged and nothing is stored. The
// next first start gets the memfd back with the sockets, and State
// returns it (an fd of that name is never a socket for Listen); state
// that was cut short or aborted reads as an error, never as short state.
// Once Ready succeeds, that generation removes it from the store, so a
// later crash does not replay it. Wait for Exit after Stop: the state is
// stored there. So state reaches the next generation:
//
//   - through an upgrade: streamed to the new generation directly, the
//     store not involved;
//   - through `systemctl restart` with FdStore: in the store, read by the
//     next start (systemd keeps the store while a restart is queued);
//   - not through `systemctl stop` then `start`: systemd releases the
//     store when the unit stops (systemd 252 always; 254 keeps it with
//     FileDescriptorStorePreserve=yes, and then only while the unit is
//     loaded), so the next start gets ErrNoState;
//   - through a crash: nothing is written; the next start gets
//     ErrNoState, or the last state stored by a Stop if no start has
//     consumed it yet (reached Ready).
//
// memfds are Linux only: on other systems a Stop stores no state.
//
// The unit needs FileDescriptorStoreMax= above the number of sockets
// (plus one for the state). A Unix socket file of a stored socket is not
// removed by a final Stop (the next start may get the socket back); put
// it in a RuntimeDirectory= with RuntimeDirectoryPreserve=restart, which
// systemd removes on a stop.
type SystemdOptions struct {
	// FdStore pushes the sockets in use to systemd's fd store, and
	// with Options.WriteState the state at a final Stop, as described
	// above.
	FdStore bool
}

// sdState is the Upgrader's systemd integration, when Options.Systemd is
// set: an observer of the state machine that tells systemd what happens,
// and, in a first generation, the source of the sockets systemd passed.
type sdState struct {
	opts SystemdOptions
	log  *slog.Logger
	// notifier is nil when NOTIFY_SOCKET is unset.
	notifier *systemd.Notifier
	fds      *Fds
	parent   *parentLink // nil in a first generation
	exit     <-chan struct{}
	// killWait is how long an upgrade may take, the kill grace
	// included: the reload timeout is extended by that much.
	killWait   time.Duration
	writeState func(io.Writer) error

	// main is set while this process is the unit's main process: the
	// first generation from the start, a later one from its Ready.
	main atomic.Bool
	// stored are the fd store names this process learnt were stored:
	// by its parent, or by an earlier run that systemd handed back.
	// Only the one goroutine that pushes to the store uses it after New.
	stored map[string]bool
	// state is the state systemd handed back to a first start, if any;
	// stateStored is set while the store still holds it.
	state       *storedState
	stateStored atomic.Bool
}

var _ observer = (*sdState)(nil)

// storePrefix starts the names this package gives fds in the store, so
// that it never removes one it did not put there.
const storePrefix = "tableflip."

// stateStoreName is the fd store name of the state a final Stop keeps
// for the next start.
const stateStoreName = storePrefix + "state"

// newSystemd sets up the systemd integration, or returns nil without
// Options.Systemd. It runs in New, before the program can use the
// Upgrader: in a first generation it takes the sockets systemd passed.
func newSystemd(u *Upgrader) *sdState {
	if u.opts.Systemd == nil {
		return nil
	}
	sd := &sdState{
		opts: *u.opts.Systemd, log: u.log, fds: u.Fds, parent: u.parent, exit: u.exitC,
		killWait: u.opts.UpgradeTimeout + min(killGrace, u.opts.UpgradeTimeout), writeState: u.opts.WriteState,
		stored: map[string]bool{},
	}
	n, err := systemd.NewNotifier()
	switch {
	case err == nil:
		sd.notifier = n
	case !errors.Is(err, systemd.ErrNoSocket):
		u.log.Warn("tableflip: systemd notifications are off", "error", err)
	}
	for _, k := range u.Fds.inheritedKeys() {
		sd.stored[storeName(k)] = true
	}
	if u.parent == nil {
		sd.main.Store(true)
		a := newActivation(u.log)
		sd.state = a.takeState()
		sd.stateStored.Store(sd.state != nil)
		for _, l := range a.fds {
			if strings.HasPrefix(l.Name, storePrefix) {
				sd.stored[l.Name] = true
			}
		}
		u.Fds.setSource(a)
	}
	delete(sd.stored, "")
	return sd
}

// notify sends a message if there is a socket to send it to, and logs a
// failure.
func (sd *sdState) notify(what string, states ...string) {
	if sd.notifier == nil {
		return
	}
	if err := sd.notifier.Notify(states...); err != nil {
		sd.log.Warn("tableflip: can't notify systemd", "message", what, "error", err)
	}
}

// ready: READY=1 from a first generation, which also stores its sockets;
// a new generation is the main process from now on (its parent has sent
// MAINPID=, see upgradeDone), and stores its sockets once its parent has
// exited, when systemd takes it as the main process.
func (sd *sdState) ready() {
	if sd.parent == nil {
		sd.notify("ready", systemd.Ready, statusLine("Serving (pid %d)", os.Getpid()))
		sd.stateConsumed()
		if sd.opts.FdStore {
			sd.store()
		}
		return
	}
	sd.main.Store(true)
	if !sd.opts.FdStore {
		return
	}
	go func() {
		select {
		case <-sd.parent.exited:
			// With several generations this one may have handed
			// over already: then it is no longer the main process.
			if sd.parent.exitErr == nil && !closed(sd.exit) && sd.main.Load() {
				sd.store()
			}
		case <-sd.exit:
		}
	}()
}

// upgradeStarting: RELOADING=1, which starts (or answers) a reload.
func (sd *sdState) upgradeStarting() {
	if sd.notifier == nil {
		return
	}
	if err := sd.notifier.Reloading(statusText("Upgrading (pid %d)", os.Getpid())); err != nil {
		sd.log.Warn("tableflip: can't notify systemd", "message", "reloading", "error", err)
	}
}

// childStarted: the reload may take as long as the upgrade may.
func (sd *sdState) childStarted(pid int) {
	sd.notify("extend timeout", systemd.ExtendTimeout(sd.killWait),
		statusLine("Upgrading: new generation (pid %d) is starting", pid))
}

// upgradeDone: MAINPID= of the new generation with READY=1, in one
// message from this process, the main one (NotifyAccess=main suffices);
// or READY=1 naming the failure, which ends the reload.
func (sd *sdState) upgradeDone(pid int, err error) {
	if err != nil {
		sd.notify("upgrade failed", systemd.Ready,
			statusLine("Upgrade failed; serving (pid %d): %v", os.Getpid(), err))
		return
	}
	sd.notify("main pid", systemd.MainPID(pid), systemd.Ready,
		statusLine("Serving (pid %d); upgraded from pid %d", pid, os.Getpid()))
	sd.main.Store(false)
	// Not a moment before systemd has taken that in: if it saw this
	// process exit first, it would take the main process for gone and
	// stop the unit.
	if sd.notifier != nil {
		if err := sd.notifier.Barrier(killGrace); err != nil {
			sd.log.Warn("tableflip: systemd did not confirm the new main PID", "child_pid", pid, "error", err)
		}
	}
}

// refused: a reload that systemd started (Type=notify-reload) waits for
// RELOADING=1 and READY=1, so both are sent. Before Ready, nothing is:
// READY=1 would say that the service has started.
func (sd *sdState) refused(err error) {
	if errors.Is(err, ErrNotReady) {
		return
	}
	sd.upgradeStarting()
	sd.notify("upgrade refused", systemd.Ready,
		statusLine("Upgrade refused; serving (pid %d): %v", os.Getpid(), err))
}

// stopping: a final Stop of the main process stores the state, then says
// STOPPING=1.
func (sd *sdState) stopping() {
	if !sd.main.Load() {
		return
	}
	sd.saveState()
	sd.notify("stopping", systemd.Stopping, statusLine("Stopping (pid %d)", os.Getpid()))
}

// store pushes what this generation passes on to systemd's fd store,
// after removing the names nothing uses any more.
func (sd *sdState) store() {
	n := sd.notifier
	if n == nil {
		return
	}
	// From now on systemd may hand the Unix sockets back: keep their
	// files.
	p, err := sd.fds.collect(true)
	if err != nil {
		sd.log.Warn("tableflip: can't push fds to systemd's store", "error", err)
		return
	}
	defer p.close()
	var names []string
	fds := map[string][]int{}
	for i, e := range p.entries {
		name := storeName(key{e.Kind, e.Network, e.Addr})
		if name == "" {
			sd.log.Warn("tableflip: not storing a socket whose name would be too long for systemd", "socket", key{e.Kind, e.Network, e.Addr}.String())
			continue
		}
		if _, ok := fds[name]; !ok {
			names = append(names, name)
		}
		fds[name] = append(fds[name], p.fds[i])
	}

	stale := make([]string, 0, len(sd.stored))
	for name := range sd.stored {
		if _, ok := fds[name]; !ok {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	for _, name := range stale {
		if err := n.RemoveFiles(name); err != nil {
			sd.log.Warn("tableflip: can't remove stale fds from systemd's store", "name", name, "error", err)
		}
	}
	sd.stored = map[string]bool{}
	for _, name := range names {
		list := fds[name]
		for len(list) > 0 {
			batch := list[:min(len(list), systemd.MaxNotifyFds)]
			list = list[len(batch):]
			if err := n.NotifyWithFds(batch, systemd.FdStore, systemd.FdName(name)); err != nil {
				sd.log.Warn("tableflip: can't push fds to systemd's store", "name", name, "error", err)
			}
		}
		sd.stored[name] = true
	}
	if len(stale)+len(names) > 0 {
		sd.log.Info("tableflip: updated systemd's fd store", "stored", len(names), "removed", len(stale))
	}
}

// State in systemd's fd store.
//
// A final Stop with SystemdOptions.FdStore and Options.WriteState set
// writes the state, as the same chunked stream an upgrade sends (see
// internal/handover), into a memfd and pushes it to the store under
// stateStoreName. The next first start gets it back with the sockets
// (LISTEN_FDNAMES), reads it through State, and removes it from the
// store once Ready succeeds. Only Linux has memfds: elsewhere nothing is
// stored.

// storedState is state that systemd handed back to a first start.
type storedState struct {
	*handover.StateReader
	file *os.File
}

// saveState stores the program's state in the fd store, on a final Stop
// of the main process.
func (sd *sdState) saveState() {
	n := sd.notifier
	if !sd.opts.FdStore || sd.writeState == nil || n == nil {
		return
	}
	f, err := memfd.Create(stateStoreName)
	if errors.Is(err, memfd.ErrNotSupported) {
		return
	}
	if err != nil {
		sd.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	defer f.Close()
	w := handover.NewStateWriter(f)
	if err := sd.writeState(w); err != nil {
		sd.log.Error("tableflip: not storing state in systemd's fd store: the writer failed", "error", err)
		return
	}
	if err := w.Close(); err != nil {
		sd.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		sd.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	// State systemd handed to this process and that it still holds
	// (Ready never succeeded) is replaced, not added to.
	if sd.stateStored.CompareAndSwap(true, false) {
		sd.notify("remove stored state", systemd.FdStoreRemove, systemd.FdName(stateStoreName))
	}
	if err := n.StoreFiles(stateStoreName, f); err != nil {
		sd.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	sd.log.Info("tableflip: stored state in systemd's fd store", "name", stateStoreName)
}

// stateConsumed runs when the first generation's Ready has succeeded: the
// state systemd handed back is used up, and removed from the store so
// that a later crash does not replay it.
func (sd *sdState) stateConsumed() {
	if sd.state == nil {
		return
	}
	sd.state.file.Close()
	if sd.stateStored.CompareAndSwap(true, false) {
		sd.notify("remove stored state", systemd.FdStoreRemove, systemd.FdName(stateStoreName))
	}
}

// activation are the sockets systemd passed to a first start that nobody
// has asked for yet: the source Fds asks when the parent passed nothing
// for a name.
type activation struct {
	fds []systemd.ListenFd
	log *slog.Logger
}

var _ source = (*activation)(nil)

// newActivation takes the sockets systemd passed to this process.
func newActivation(log *slog.Logger) *activation {
	// Garbage in LISTEN_FDNAMES would make ListenFds refuse every fd,
	// and a socket the program then creates itself would collide with
	// systemd's (EADDRINUSE). The sockets are still found by address.
	if _, err := systemd.ParseListenEnv(os.LookupEnv, os.Getpid()); err != nil {
		var ee *systemd.EnvError
		if errors.As(err, &ee) && ee.Var == systemd.EnvListenFdNames {
			log.Warn("tableflip: ignoring the names of the fds systemd passed", "error", err)
			os.Unsetenv(systemd.EnvListenFdNames)
		}
	}
	fds, err := systemd.ListenFds()
	if err != nil {
		log.Warn("tableflip: socket activation", "error", err)
	}
	a := &activation{log: log}
	for _, l := range fds {
		if l.File != nil {
			a.fds = append(a.fds, l)
		}
	}
	return a
}

// takeState removes the fds named stateStoreName; the first becomes the
// state, any other is closed.
func (a *activation) takeState() *storedState {
	var s *storedState
	a.fds = slices.DeleteFunc(a.fds, func(l systemd.ListenFd) bool {
		if l.Name != stateStoreName {
			return false
		}
		if s == nil {
			// Offset 0 whatever the shared file offset is: ReadAt.
			r := io.NewSectionReader(l.File, 0, math.MaxInt64)
			s = &storedState{handover.NewStateReader(r), l.File}
		} else {
			a.log.Warn("tableflip: ignoring another state fd systemd passed", "fd", l.Fd)
			l.File.Close()
		}
		return true
	})
	return s
}

// take returns a socket systemd passed for k, as an inherited entry, or
// nil.
func (a *activation) take(k key) *entry {
	i := a.find(k)
	if i < 0 {
		return nil
	}
	l := a.fds[i]
	a.fds = slices.Delete(a.fds, i, i+1)
	fd, err := dup.Conn(l.File)
	l.File.Close()
	if err != nil {
		a.log.Warn("tableflip: can't use a socket systemd passed", "fd", l.Fd, "name", l.Name, "error", err)
		return nil
	}
	e := &entry{key: k, fd: fd}
	switch addr := l.Addr.(type) {
	case *net.UnixAddr:
		// systemd listens on it: its file is systemd's.
		e.held = true
	case nil:
	default:
		if addr.String() != k.addr {
			e.bound = addr.String()
		}
	}
	a.log.Info("tableflip: using a socket systemd passed", "socket", k.String(), "fd", l.Fd, "name", l.Name)
	return e
}

// find returns the index of the fd for k, by the rules in the
// SystemdOptions documentation, or -1.
func (a *activation) find(k key) int {
	if len(a.fds) == 0 {
		return -1
	}
	rules := []func(l *systemd.ListenFd) bool{
		func(l *systemd.ListenFd) bool { return l.Name == storeName(k) },
		func(l *systemd.ListenFd) bool {
			switch k.kind {
			case handover.KindListener:
				return l.Listening && l.Matches(k.network, k.addr)
			case handover.KindPacketConn:
				return isPacket(l.Network) && l.Matches(k.network, k.addr)
			}
			return false
		},
		func(l *systemd.ListenFd) bool {
			if l.Name != k.addr {
				return false
			}
			switch k.kind {
			case handover.KindListener:
				return l.Listening && sameNetwork(k.network, l.Network)
			case handover.KindPacketConn:
				return isPacket(l.Network) && sameNetwork(k.network, l.Network)
			case handover.KindConn:
				return !l.Listening && !isPacket(l.Network) && sameNetwork(k.network, l.Network)
			}
			return true // a file: anything
		},
	}
	for _, match := range rules {
		for i := range a.fds {
			if match(&a.fds[i]) {
				return i
			}
		}
	}
	return -1
}

// close closes the sockets systemd passed that nobody asked for.
func (a *activation) close() {
	for _, l := range a.fds {
		l.File.Close()
	}
	a.fds = nil
}

func isPacket(network string) bool {
	return network == "udp4" || network == "udp6" || network == "unixgram"
}

func sameNetwork(want, have string) bool {
	switch want {
	case "tcp", "udp":
		return strings.HasPrefix(have, want)
	}
	return want == have
}

// storeName is the fd store name of a socket or file: the prefix, its
// kind, network and address, with '%', ':' and bytes systemd does not
// allow in a name percent-encoded. It is "" when the name would be too
// long.
func storeName(k key) string {
	var b strings.Builder
	b.WriteString(storePrefix)
	b.WriteByte(k.kind)
	b.WriteByte('.')
	b.WriteString(k.network)
	b.WriteByte('.')
	for i := 0; i < len(k.addr); i++ {
		c := k.addr[i]
		if c < ' ' || c >= 127 || c == ':' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	if b.Len() > systemd.MaxFdNameLen {
		return ""
	}
	return b.String()
}

// statusLine returns STATUS= with the formatted text.
func statusLine(format string, args ...any) string {
	return systemd.Status(statusText(format, args...))
}

// statusText makes a STATUS= value: one line, short enough for any
// message.
func statusText(format string, args ...any) string {
	s := fmt.Sprintf(format, args...)
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == 0 {
			return ' '
		}
		return r
	}, s)
	const maxLen = 1024
	if len(s) > maxLen {
		s = s[:maxLen] + "..."
	}
	return s
}
