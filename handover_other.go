//go:build !unix

package tableflip

import (
	"context"
	"io"
	"log/slog"
	"time"
)

// upgradesSupported is false: there is no way to hand a socket to a new
// process here.
const upgradesSupported = false

// parentLink never exists here: nothing starts a new generation.
type parentLink struct {
	pid     int
	exited  chan struct{}
	exitErr error
	state   *stateStream
}

// stateStream never exists here either.
type stateStream struct{ io.Reader }

type childLink struct{}

func inherit(*osEnv, *slog.Logger) (*parentLink, []*entry, error) { return nil, nil, nil }

func (*parentLink) ready(string, <-chan struct{}, time.Duration) error { return nil }
func (*parentLink) refuse(error)                                       {}

func (u *Upgrader) startChild(context.Context) error { return ErrNotSupported }
