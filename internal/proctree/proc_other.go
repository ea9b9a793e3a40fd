//go:build !linux

package proctree

import "errors"

// Supported reports whether this platform has the /proc this package
// reads: not here.
const Supported = false

// BecomeSubreaper reports that there are no subreapers here.
func BecomeSubreaper() error { return errors.ErrUnsupported }

// Stat is what /proc would say about a process.
type Stat struct {
	PID        int    `json:"pid"`
	PPID       int    `json:"ppid"`
	PGID       int    `json:"-"`
	State      string `json:"state"`
	Cmd        string `json:"cmd"`
	ForkNoExec bool   `json:"-"`
}

// ReadStat finds nothing here.
func ReadStat(int) (Stat, bool) { return Stat{}, false }

// Descendants finds nothing here.
func Descendants(int) []Stat { return nil }

// Children finds nothing here.
func Children(int) []int { return nil }

// RSSKiB finds nothing here.
func RSSKiB(int) (int, bool) { return 0, false }
