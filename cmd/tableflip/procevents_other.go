//go:build unix && !linux

package main

import (
	"errors"

	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// procEvents is Linux's process events connector, which other systems
// lack: the check looks at processes instead (newGenWatch), and polls.
type procEvents struct{}

func openProcEvents() (*procEvents, error) {
	return nil, errors.New("no process events connector on this system")
}

func (e *procEvents) watch(parent int)   {}
func (e *procEvents) unwatch(parent int) {}
func (e *procEvents) close()             {}

func (e *procEvents) ended(parent int) (pid int, how proctree.Exit, ok bool, changed <-chan struct{}, reliable bool) {
	return 0, proctree.Exit{}, false, nil, false
}
