package tableflip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/seed589fcc9d/tableflip/internal/handover"
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
// nothing. After `systemctl restart`, a crash or a soft reboot, the next
// first generation gets them back through socket activation (rule 1
// above), and no connection is refused in between. Upgrades do not need
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
//   - through `systemctl stop` or `restart` with FdStore: in the store,
//     read by the next start;
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

// sdState is what the Upgrader keeps for systemd; nil when
// Options.Systemd is nil.
type sdState struct {
	opts SystemdOptions
	// notifier is nil when NOTIFY_SOCKET is unset.
	notifier *systemd.Notifier
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

// sdFds are the sockets systemd passed that nobody has asked for yet.
type sdFds []systemd.ListenFd

// storePrefix starts the names this package gives fds in the store, so
// that it never removes one it did not put there.
const storePrefix = "tableflip."

// heldPrefix marks, in an entry's bound address, a Unix socket that
// systemd holds (from socket activation or the fd store): its file is
// never removed. Being part of the entry, it is passed on with it.
const heldPrefix = "systemd:"

// heldBySystemd reports whether e is a Unix socket whose file belongs to
// systemd.
func (e *entry) heldBySystemd() bool {
	return strings.HasPrefix(e.bound, heldPrefix)
}

// initSystemd runs in New, before the program can use the Upgrader.
func (u *Upgrader) initSystemd() {
	if u.opts.Systemd == nil {
		return
	}
	sd := &sdState{opts: *u.opts.Systemd, stored: map[string]bool{}}
	n, err := systemd.NewNotifier()
	switch {
	case err == nil:
		sd.notifier = n
	case !errors.Is(err, systemd.ErrNoSocket):
		u.log.Warn("tableflip: systemd notifications are off", "error", err)
	}
	if u.parent == nil {
		sd.main.Store(true)
		u.Fds.activate(u.log)
		sd.state = u.Fds.takeStoredState()
		sd.stateStored.Store(sd.state != nil)
	}
	u.Fds.mu.Lock()
	for _, list := range u.Fds.inherited {
		for _, e := range list {
			sd.stored[storeName(e.key)] = true
		}
	}
	for _, l := range u.Fds.activated {
		if strings.HasPrefix(l.Name, storePrefix) {
			sd.stored[l.Name] = true
		}
	}
	u.Fds.mu.Unlock()
	delete(sd.stored, "")
	u.sd = sd
}

// activate takes the sockets systemd passed to this process.
func (f *Fds) activate(log *slog.Logger) {
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
	var usable sdFds
	for _, l := range fds {
		if l.File != nil {
			usable = append(usable, l)
		}
	}
	f.mu.Lock()
	f.activated = usable
	f.mu.Unlock()
}

// takeActivated returns a socket systemd passed for k, as an inherited
// entry, or nil. f.mu is held.
func (f *Fds) takeActivated(k key) *entry {
	i := f.activated.find(k)
	if i < 0 {
		return nil
	}
	l := f.activated[i]
	f.activated = slices.Delete(f.activated, i, i+1)
	fd, err := dupConn(l.File)
	l.File.Close()
	if err != nil {
		f.log.Warn("tableflip: can't use a socket systemd passed", "fd", l.Fd, "name", l.Name, "error", err)
		return nil
	}
	e := &entry{key: k, fd: fd}
	switch a := l.Addr.(type) {
	case *net.UnixAddr:
		e.bound = heldPrefix + a.Name
	case nil:
	default:
		if a.String() != k.addr {
			e.bound = a.String()
		}
	}
	f.log.Info("tableflip: using a socket systemd passed", "socket", k.String(), "fd", l.Fd, "name", l.Name)
	return e
}

// find returns the index of the fd for k, by the rules in the
// SystemdOptions documentation, or -1.
func (fds sdFds) find(k key) int {
	if len(fds) == 0 {
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
		for i := range fds {
			if match(&fds[i]) {
				return i
			}
		}
	}
	return -1
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

// closeActivated closes the sockets systemd passed that nobody asked
// for. f.mu is held.
func (f *Fds) closeActivated() {
	for _, l := range f.activated {
		l.File.Close()
	}
	f.activated = nil
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

// notify sends a message if there is a socket to send it to, and logs a
// failure.
func (u *Upgrader) notify(what string, states ...string) {
	if u.sd == nil || u.sd.notifier == nil {
		return
	}
	if err := u.sd.notifier.Notify(states...); err != nil {
		u.log.Warn("tableflip: can't notify systemd", "message", what, "error", err)
	}
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
	const max = 1024
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// sdReady runs when Ready has succeeded.
func (u *Upgrader) sdReady() {
	if u.sd == nil {
		return
	}
	if u.parent == nil {
		u.notify("ready", systemd.Ready, statusLine("Serving (pid %d)", os.Getpid()))
		u.sdStateConsumed()
		if u.sd.opts.FdStore {
			u.sdStore()
		}
		return
	}
	// The parent tells systemd that this process is the main one, and
	// it has done so by the time it exits; systemd would ignore this
	// process's messages before (NotifyAccess=main).
	u.sd.main.Store(true)
	if !u.sd.opts.FdStore {
		return
	}
	go func() {
		select {
		case <-u.parent.exited:
			// With several generations this one may have handed
			// over already: then it is no longer the main process.
			if u.parent.exitErr == nil && !closed(u.exitC) && u.sd.main.Load() {
				u.sdStore()
			}
		case <-u.exitC:
		}
	}()
}

// sdUpgradeStarting runs when an upgrade begins.
func (u *Upgrader) sdUpgradeStarting() {
	if u.sd == nil || u.sd.notifier == nil {
		return
	}
	if err := u.sd.notifier.Reloading(statusText("Upgrading (pid %d)", os.Getpid())); err != nil {
		u.log.Warn("tableflip: can't notify systemd", "message", "reloading", "error", err)
	}
}

// sdChildStarted runs once the new generation's process exists.
func (u *Upgrader) sdChildStarted(pid int) {
	grace := min(killGrace, u.opts.UpgradeTimeout)
	u.notify("extend timeout", systemd.ExtendTimeout(u.opts.UpgradeTimeout+grace),
		statusLine("Upgrading: new generation (pid %d) is starting", pid))
}

// sdChildReady runs once the new generation is acknowledged.
func (u *Upgrader) sdChildReady(pid int) {
	u.notify("main pid", systemd.MainPID(pid), systemd.Ready,
		statusLine("Serving (pid %d); upgraded from pid %d", pid, os.Getpid()))
	if u.sd != nil {
		u.sd.main.Store(false)
	}
}

// sdUpgradeFailed runs when an upgrade has failed; this process serves on.
func (u *Upgrader) sdUpgradeFailed(err error) {
	u.notify("upgrade failed", systemd.Ready,
		statusLine("Upgrade failed; serving (pid %d): %v", os.Getpid(), err))
}

// sdRefused runs when an upgrade is refused before it starts. A reload
// that systemd started (Type=notify-reload) waits for RELOADING=1 and
// READY=1, so both are sent.
func (u *Upgrader) sdRefused(err error) {
	u.sdUpgradeStarting()
	u.notify("upgrade refused", systemd.Ready,
		statusLine("Upgrade refused; serving (pid %d): %v", os.Getpid(), err))
}

// sdStopping runs on a final Stop.
func (u *Upgrader) sdStopping() {
	if u.sd == nil || !u.sd.main.Load() {
		return
	}
	u.sdSaveState()
	u.notify("stopping", systemd.Stopping, statusLine("Stopping (pid %d)", os.Getpid()))
}

// sdStore pushes what this generation passes on to systemd's fd store,
// after removing the names nothing uses any more.
func (u *Upgrader) sdStore() {
	n := u.sd.notifier
	if n == nil {
		return
	}
	f := u.Fds
	var (
		names []string
		fds   = map[string][]int{}
		dups  []int
	)
	f.mu.Lock()
	for _, e := range f.used {
		name := storeName(e.key)
		if name == "" {
			u.log.Warn("tableflip: not storing a socket whose name would be too long for systemd", "socket", e.key.String())
			continue
		}
		fd, err := e.dup()
		if err != nil {
			continue // closed by the program
		}
		dups = append(dups, fd)
		if e.isUnixFile() && e.bound == "" {
			// From now on systemd may hand it back: keep its file.
			e.bound = heldPrefix + e.addr
		}
		if _, ok := fds[name]; !ok {
			names = append(names, name)
		}
		fds[name] = append(fds[name], fd)
	}
	f.mu.Unlock()
	defer func() {
		for _, fd := range dups {
			closeFD(fd)
		}
	}()

	stale := make([]string, 0, len(u.sd.stored))
	for name := range u.sd.stored {
		if _, ok := fds[name]; !ok {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	for _, name := range stale {
		if err := n.RemoveFiles(name); err != nil {
			u.log.Warn("tableflip: can't remove stale fds from systemd's store", "name", name, "error", err)
		}
	}
	u.sd.stored = map[string]bool{}
	for _, name := range names {
		list := fds[name]
		for len(list) > 0 {
			batch := list[:min(len(list), systemd.MaxNotifyFds)]
			list = list[len(batch):]
			if err := n.NotifyWithFds(batch, systemd.FdStore, systemd.FdName(name)); err != nil {
				u.log.Warn("tableflip: can't push fds to systemd's store", "name", name, "error", err)
			}
		}
		u.sd.stored[name] = true
	}
	if len(stale)+len(names) > 0 {
		u.log.Info("tableflip: updated systemd's fd store", "stored", len(names), "removed", len(stale))
	}
}
