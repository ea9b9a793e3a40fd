//go:build unix

package main

import (
	"fmt"
	"slices"

	"github.com/seed589fcc9d/tableflip/internal/proctree"
)

// findLeftovers looks, while the last generation runs, for what earlier
// generations left: zombies anywhere below the check and live processes
// outside the last generation's own tree.
func (c *checker) findLeftovers() {
	cur := c.currentPID()
	if !proctree.Supported {
		for i, old := range c.olds {
			if c.procs.Alive(old) {
				c.rep.Leftovers = append(c.rep.Leftovers, leftover{proctree.Stat{PID: old}, fmt.Sprintf("generation %d still running", i+1)})
			}
		}
		return
	}
	inCurrent := map[int]bool{cur: true}
	for _, p := range proctree.Descendants(cur) {
		inCurrent[p.PID] = true
	}
	for _, p := range proctree.Descendants(c.self) {
		switch {
		case p.State == "Z" && p.PPID == c.self:
			// Ours, being reaped.
		case p.State == "Z":
			c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, "zombie: its parent does not wait for it"})
		case slices.Contains(c.olds, p.PID):
			c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, fmt.Sprintf("old generation %d still running", slices.Index(c.olds, p.PID)+1)})
		case inCurrent[p.PID]:
		default:
			c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, "stray process, not part of the running generation"})
		}
	}
}

// findStrays looks for what outlived the last generation. The last
// generation itself is not counted (stopServer has said whether it had to
// be killed), nor a zombie whose parent is already counted.
func (c *checker) findStrays() {
	listed := func(pid int) bool {
		return slices.ContainsFunc(c.rep.Leftovers, func(l leftover) bool { return l.PID == pid })
	}
	for _, p := range proctree.Descendants(c.self) {
		switch {
		case p.PID == c.currentPID(),
			p.State == "Z" && p.PPID == c.self,
			p.State == "Z" && listed(p.PPID),
			listed(p.PID):
			continue
		}
		c.rep.Leftovers = append(c.rep.Leftovers, leftover{p, "outlived the server"})
	}
}
