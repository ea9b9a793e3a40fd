//go:build linux

package main

import (
	"context"
	"errors"
	"net/http"

	"github.com/seed589fcc9d/tableflip"
	"github.com/seed589fcc9d/tableflip/drain"
)

// serveOurs is the sample server on this module: Upgrader plus drain,
// as the drain package documentation shows.
func serveOurs(cfg *serverConfig) error {
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: upgradeTimeout})
	if err != nil {
		return err
	}
	defer upg.Stop()

	srv := drain.NewServer(&http.Server{Handler: handler()}, drain.Options{})
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
	if _, err := srv.Drain(ctx); err != nil && !errors.Is(err, drain.ErrNotServing) {
		return err
	}
	return nil
}
