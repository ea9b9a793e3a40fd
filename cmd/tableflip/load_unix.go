//go:build unix

package main

import (
	"context"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// probe waits until the URL answers a request of the first mode (an
// HTTP error status or a wrong line counts: the server is up).
func (c *checker) probe(ctx context.Context) error {
	m := c.cfg.modes[0]
	if m == loadgen.ModeHTTP2 && c.tlsURL != "" {
		m = loadgen.ModeKeepAlive // c.url is the sample server's plain one
	}
	return loadgen.Probe(ctx, loadgen.Options{
		URL:       c.url,
		Mode:      m,
		Method:    c.cfg.method,
		Body:      c.cfg.body,
		Timeout:   time.Second,
		TLSConfig: c.tlsConf,
	})
}

func (c *checker) startLoad(ctx context.Context) error {
	per := c.cfg.interval + c.cfg.upgradeTimeout + c.cfg.exitTimeout
	budget := time.Duration(c.cfg.upgrades+2)*per + c.cfg.duration + 10*time.Second
	for _, m := range c.cfg.modes {
		o := loadgen.Options{
			URL:         c.url,
			Mode:        m,
			Conns:       c.cfg.conns,
			Method:      c.cfg.method,
			Body:        c.cfg.body,
			Duration:    budget,
			MaxRequests: max(1, c.cfg.maxRequests/len(c.cfg.modes)),
			Timeout:     c.cfg.timeout,
			Pace:        c.cfg.pace,
			TLSConfig:   c.tlsConf,
		}
		if m == loadgen.ModeGRPC {
			o.Method = ""
		}
		if m == loadgen.ModeHTTP2 && c.tlsURL != "" {
			o.URL = c.tlsURL
		}
		l, err := loadgen.Start(ctx, o)
		if err != nil {
			c.stopLoad()
			return usageErrorf("%v", err)
		}
		c.loads = append(c.loads, l)
	}
	return nil
}

func (c *checker) stopLoad() {
	if c.rep.results != nil || c.loads == nil {
		return
	}
	for _, l := range c.loads {
		c.rep.results = append(c.rep.results, l.Stop())
	}
}
