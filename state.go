package tableflip

import (
	"errors"
	"io"
)

// ErrNoState is returned by State when there is no state to read: on a
// first start without state in systemd's fd store (see SystemdOptions),
// or when the previous generation has no Options.WriteState.
// State that is there but empty is a reader at its end instead.
var ErrNoState = errors.New("tableflip: no state from a previous generation")

// State returns the state the previous generation wrote with
// Options.WriteState, as a stream: during an upgrade, the parent's; on a
// first start, what a final Stop stored in systemd's fd store, if
// systemd handed it back (see SystemdOptions). Read it before Ready:
// Ready discards whatever is left. Every call returns the same reader.
//
// The reader returns io.EOF at the end of complete state. If the previous
// generation's writer failed, or the previous generation died while
// writing, it returns an error instead: truncated state never reads as
// valid short state. A program that cannot use the state it reads should
// exit (or at least not call Ready): the upgrade then fails, and the
// previous generation keeps serving and is told through
// Options.OnUpgradeFailed.
func (u *Upgrader) State() (io.Reader, error) {
	if u.parent == nil && u.sd != nil && u.sd.state != nil {
		return u.sd.state, nil
	}
	if u.parent == nil || u.parent.state == nil {
		return nil, ErrNoState
	}
	return u.parent.state, nil
}
