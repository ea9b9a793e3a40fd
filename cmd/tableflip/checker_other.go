//go:build !unix

package main

import (
	"context"
	"runtime"
)

// runCheck cannot run here: upgrades need Unix signals and fd passing.
func runCheck(ctx context.Context, cfg *checkConfig, prog *progress) (*report, error) {
	return nil, usageErrorf("check needs a Unix-like system (upgrades use signals and fd passing); not supported on %s", runtime.GOOS)
}
