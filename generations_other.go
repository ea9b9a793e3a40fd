//go:build !unix

package tableflip

// Without upgrades there is never an older generation, and never a
// handover to drain after.

func (u *Upgrader) initGenerations() {}

func (u *Upgrader) handedOver() {}

// processGone is never asked: there is never a parent.
func processGone(int) bool { return false }
