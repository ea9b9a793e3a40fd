//go:build unix

package main

import (
	"context"

	"github.com/seed589fcc9d/tableflip"
)

// servingGeneration returns the pid of the generation that serves for
// server, the process that answers on the control socket: server itself
// for a program on the Upgrader, whose every generation answers for
// itself; under tableflip run, whose pid stays the same for ever, the
// program's generation that its status lists last (the serving one).
// The check then waits for that generation's exit, not the server's.
func (c *checker) servingGeneration(ctx context.Context, server int) int {
	resp, err := tableflip.ControlCall(ctx, c.cfg.control, tableflip.ControlStatus)
	if err != nil || !resp.OK || resp.Status == nil || resp.Status.PID != server || len(resp.Status.Generations) == 0 {
		return server
	}
	return resp.Status.Generations[len(resp.Status.Generations)-1].PID
}
