//go:build unix && !linux

package main

import "errors"

// procEvents is Linux's process events connector, which other systems
// lack: the check looks at processes instead (newGenWatch), and polls.
type procEvents struct{}

func openProcEvents() (*procEvents, error) {
	return nil, errors.New("no process events connector on this system")
}

func (e *procEvents) watch(parent int)   {}
func (e *procEvents) unwatch(parent int) {}
func (e *procEvents) close()             {}

func (e *procEvents) ended(parent int) (pid int, how exitInfo, ok bool, changed <-chan struct{}, reliable bool) {
	return 0, exitInfo{}, false, nil, false
}
