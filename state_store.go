package tableflip

import (
	"errors"
	"io"
	"math"
	"os"
	"slices"

	"github.com/seed589fcc9d/tableflip/internal/handover"
	"github.com/seed589fcc9d/tableflip/systemd"
)

// State in systemd's fd store.
//
// A final Stop with SystemdOptions.FdStore and Options.WriteState set
// writes the state, as the same chunked stream an upgrade sends (see
// internal/handover), into a memfd and pushes it to the store under
// stateStoreName. The next first start gets it back with the sockets
// (LISTEN_FDNAMES), reads it through State, and removes it from the
// store once Ready succeeds. Only Linux has memfds: elsewhere nothing is
// stored.

// stateStoreName is the fd store name of the state a final Stop keeps
// for the next start.
const stateStoreName = storePrefix + "state"

// storedState is state that systemd handed back to a first start.
type storedState struct {
	*handover.StateReader
	file *os.File
}

// takeStoredState removes the fds named stateStoreName from those that
// systemd passed; the first becomes the state, any other is closed.
func (f *Fds) takeStoredState() *storedState {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s *storedState
	f.activated = slices.DeleteFunc(f.activated, func(l systemd.ListenFd) bool {
		if l.Name != stateStoreName {
			return false
		}
		if s == nil {
			// Offset 0 whatever the shared file offset is: ReadAt.
			r := io.NewSectionReader(l.File, 0, math.MaxInt64)
			s = &storedState{handover.NewStateReader(r), l.File}
		} else {
			f.log.Warn("tableflip: ignoring another state fd systemd passed", "fd", l.Fd)
			l.File.Close()
		}
		return true
	})
	return s
}

// sdSaveState stores the program's state in the fd store, on a final
// Stop of the main process.
func (u *Upgrader) sdSaveState() {
	n := u.sd.notifier
	if !u.sd.opts.FdStore || u.opts.WriteState == nil || n == nil {
		return
	}
	f, err := newStateMemfd()
	if errors.Is(err, errors.ErrUnsupported) {
		return
	}
	if err != nil {
		u.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	defer f.Close()
	w := handover.NewStateWriter(f)
	if err := u.opts.WriteState(w); err != nil {
		u.log.Error("tableflip: not storing state in systemd's fd store: the writer failed", "error", err)
		return
	}
	if err := w.Close(); err != nil {
		u.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		u.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	// State systemd handed to this process and that it still holds
	// (Ready never succeeded) is replaced, not added to.
	if u.sd.stateStored.CompareAndSwap(true, false) {
		u.notify("remove stored state", systemd.FdStoreRemove, systemd.FdName(stateStoreName))
	}
	if err := n.StoreFiles(stateStoreName, f); err != nil {
		u.log.Warn("tableflip: can't store state in systemd's fd store", "error", err)
		return
	}
	u.log.Info("tableflip: stored state in systemd's fd store", "name", stateStoreName)
}

// sdStateConsumed runs when the first generation's Ready has succeeded:
// the state systemd handed back is used up, and removed from the store
// so that a later crash does not replay it.
func (u *Upgrader) sdStateConsumed() {
	if u.sd.state == nil {
		return
	}
	u.sd.state.file.Close()
	if u.sd.stateStored.CompareAndSwap(true, false) {
		u.notify("remove stored state", systemd.FdStoreRemove, systemd.FdName(stateStoreName))
	}
}
