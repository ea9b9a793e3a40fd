//go:build linux

package main

import (
	"context"
	"net/http"

	"github.com/cloudflare/tableflip"
)

// serveTableflip is the sample server on cloudflare/tableflip v1.2.3,
// written as its README and http example do: SIGHUP runs Upgrade, and
// http.Server.Shutdown runs once Exit is closed.
func serveTableflip(cfg *serverConfig) error {
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: upgradeTimeout})
	if err != nil {
		return err
	}
	defer upg.Stop()

	srv := &http.Server{Handler: handler()}
	for i, addr := range cfg.addrs {
		ln, err := upg.Listen("tcp", addr)
		if err != nil {
			return err
		}
		if i == 0 {
			go srv.Serve(ln)
		}
	}
	if err := upg.Ready(); err != nil {
		return err
	}
	ctl, err := dialControl(cfg, waitForParent(upg.WaitForParent), upg.Upgrade, upg.Stop)
	if err != nil {
		return err
	}
	defer ctl.close()
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	return srv.Shutdown(ctx)
}
