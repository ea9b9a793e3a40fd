// Package loadgen puts an HTTP server on loopback under load and records
// what every request saw, so that a report can say exactly which requests
// failed, how, and when.
//
// The clients never retry: a request that fails is recorded as a failure
// of a named kind (see Outcome), because a retry hides exactly the losses
// that a graceful upgrade must not cause. The one exception is ModeGoClient,
// which is net/http's own client with its own retry rules, there to show
// what most Go programs would see.
//
// A load is bounded: it stops by itself after Options.Duration or after
// Options.MaxRequests requests, whichever comes first, and it only ever
// connects to loopback addresses.
package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Mode is how the clients of a load talk to the server.
type Mode string

// Modes.
const (
	// ModeKeepAlive sends HTTP/1.1 requests over long-lived connections,
	// written and parsed directly on the socket. A connection is replaced
	// only when the server asks (Connection: close) or after a failure.
	ModeKeepAlive Mode = "keepalive"
	// ModeNewConn opens a new connection for every request.
	ModeNewConn Mode = "newconn"
	// ModeGoClient uses net/http's Client over HTTP/1.1 with keep-alive.
	// It retries some requests by itself (idempotent ones whose connection
	// was closed before anything was read), as every Go program does.
	ModeGoClient Mode = "goclient"
	// ModeHTTP2 uses net/http's Client over HTTP/2; the URL must be https.
	ModeHTTP2 Mode = "h2"
)

// Modes lists the modes in the order reports show them.
func Modes() []Mode { return []Mode{ModeKeepAlive, ModeNewConn, ModeGoClient, ModeHTTP2} }

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes() {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("loadgen: unknown mode %q (want keepalive, newconn, goclient or h2)", s)
}

// Defaults for the zero fields of Options.
const (
	DefaultConns       = 8
	DefaultDuration    = 30 * time.Second
	DefaultMaxRequests = 2_000_000
	DefaultTimeout     = 10 * time.Second
)

// Options configure a load. Zero fields take the documented defaults.
type Options struct {
	// URL is the target, http:// or https://, on a loopback host
	// (127.0.0.0/8, ::1 or localhost). Required.
	URL string
	// Mode defaults to ModeKeepAlive.
	Mode Mode
	// Conns is the number of concurrent clients, each with at most one
	// request in flight. Defaults to DefaultConns.
	Conns int
	// Method defaults to GET, or POST when Body is not empty.
	Method string
	// Body is sent with every request.
	Body []byte
	// Duration bounds the load in time. Defaults to DefaultDuration.
	Duration time.Duration
	// MaxRequests bounds the load in requests. Defaults to
	// DefaultMaxRequests (about 50 MB of records).
	MaxRequests int
	// Timeout bounds each request, connecting included. Defaults to
	// DefaultTimeout.
	Timeout time.Duration
	// TLSConfig is used for https URLs. Nil means a config that accepts
	// any certificate, which is acceptable only because the peer is on
	// loopback. ModeHTTP2 adds "h2" to its NextProtos.
	TLSConfig *tls.Config
}

// Record is one request.
type Record struct {
	// Start is when the request began, measured from Result.Started.
	Start time.Duration
	// Latency runs from the start (connecting, in ModeNewConn) to the last
	// byte of the response, or to the failure.
	Latency time.Duration
	Outcome Outcome
}

// End is when the request finished, measured from Result.Started.
func (r Record) End() time.Duration { return r.Start + r.Latency }

// Result is what a finished load recorded.
type Result struct {
	Mode    Mode
	Started time.Time
	// Elapsed is how long the load ran.
	Elapsed time.Duration
	// Records are sorted by Start. Requests still in flight when the load
	// was stopped are not recorded: they neither failed nor succeeded.
	Records []Record
	// Examples holds the first error seen of each failure kind, to show
	// a person what the failures looked like.
	Examples map[Outcome]string
	// LimitReached reports that the load stopped because it reached
	// MaxRequests rather than its duration or a call to Stop.
	LimitReached bool
}

// Counts are live totals of a running load.
type Counts struct {
	Requests int64 // finished requests, failed ones included
	Failed   int64
}

// Load is a running load. Its methods are safe for concurrent use.
type Load struct {
	opts    Options
	started time.Time
	cancel  context.CancelFunc
	done    chan struct{}

	issued   atomic.Int64
	finished atomic.Int64
	failed   atomic.Int64
	limit    atomic.Bool

	mu       sync.Mutex // guards examples
	examples map[Outcome]string

	// records[i] is written by client i when it stops; read after done.
	records [][]Record

	stopOnce sync.Once
	result   *Result
}

// Start checks opts and starts the clients. The load stops by itself after
// its duration or request limit, when ctx ends, or when Stop is called.
func Start(ctx context.Context, opts Options) (*Load, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	u, _ := url.Parse(opts.URL) // checked by fill
	newClient, err := clientFactory(u, opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Duration)
	l := &Load{
		opts:     opts,
		started:  time.Now(),
		cancel:   cancel,
		done:     make(chan struct{}),
		records:  make([][]Record, opts.Conns),
		examples: map[Outcome]string{},
	}
	var wg sync.WaitGroup
	for i := range opts.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient()
			defer c.close()
			l.records[i] = l.run(ctx, c)
		}()
	}
	go func() {
		wg.Wait()
		cancel()
		close(l.done)
	}()
	return l, nil
}

// Run starts a load and waits until it stops by itself or ctx ends.
func Run(ctx context.Context, opts Options) (*Result, error) {
	l, err := Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	<-l.Done()
	return l.Stop(), nil
}

// Done is closed when every client has stopped.
func (l *Load) Done() <-chan struct{} { return l.done }

// Counts returns the totals so far.
func (l *Load) Counts() Counts {
	return Counts{Requests: l.finished.Load(), Failed: l.failed.Load()}
}

// Stop stops the clients, waits for them, and returns what they recorded.
// Later calls return the same Result.
func (l *Load) Stop() *Result {
	l.stopOnce.Do(func() {
		l.cancel()
		<-l.done
		var all []Record
		for _, rs := range l.records {
			all = append(all, rs...)
		}
		sort.Slice(all, func(i, j int) bool { return all[i].Start < all[j].Start })
		l.result = &Result{
			Mode:         l.opts.Mode,
			Started:      l.started,
			Elapsed:      time.Since(l.started),
			Records:      all,
			Examples:     l.examples,
			LimitReached: l.limit.Load(),
		}
	})
	return l.result
}

// connectPause slows a client down after it could not connect, so that a
// server that is down is not hammered in a tight loop. It is a rate limit,
// not a retry: every attempt is still recorded.
const connectPause = 10 * time.Millisecond

func (l *Load) run(ctx context.Context, c client) []Record {
	var recs []Record
	for ctx.Err() == nil {
		if l.issued.Add(1) > int64(l.opts.MaxRequests) {
			l.limit.Store(true)
			l.cancel()
			break
		}
		start := time.Now()
		out, err := c.do(ctx)
		lat := time.Since(start)
		if out != OK && ctx.Err() != nil {
			// Aborted by the end of the load, not by the server.
			break
		}
		if out != OK && err != nil {
			l.mu.Lock()
			if _, ok := l.examples[out]; !ok {
				l.examples[out] = err.Error()
			}
			l.mu.Unlock()
		}
		recs = append(recs, Record{Start: start.Sub(l.started), Latency: lat, Outcome: out})
		l.finished.Add(1)
		if out != OK {
			l.failed.Add(1)
		}
		if out == Connect {
			t := time.NewTimer(connectPause)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return recs
}

func (o *Options) fill() error {
	if o.Mode == "" {
		o.Mode = ModeKeepAlive
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return err
	}
	if o.Conns <= 0 {
		o.Conns = DefaultConns
	}
	if o.Method == "" {
		o.Method = "GET"
		if len(o.Body) > 0 {
			o.Method = "POST"
		}
	}
	if o.Duration <= 0 {
		o.Duration = DefaultDuration
	}
	if o.MaxRequests <= 0 {
		o.MaxRequests = DefaultMaxRequests
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return fmt.Errorf("loadgen: bad URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("loadgen: URL %q: scheme must be http or https", o.URL)
	}
	if u.Port() == "" {
		return fmt.Errorf("loadgen: URL %q has no port", o.URL)
	}
	if !IsLoopbackHost(u.Hostname()) {
		return fmt.Errorf("loadgen: URL %q: host %q is not a loopback address", o.URL, u.Hostname())
	}
	if o.Mode == ModeHTTP2 && u.Scheme != "https" {
		return fmt.Errorf("loadgen: mode h2 needs an https URL, not %q", o.URL)
	}
	return nil
}

// IsLoopbackHost reports whether host is "localhost" or a loopback IP.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loopbackOnly is a net.Dialer Control hook that refuses any address that
// is not loopback, whatever a name resolved to.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return errors.New("loadgen: refusing to connect to non-loopback address " + address)
	}
	return nil
}

func (o *Options) tlsConfig() *tls.Config {
	if o.TLSConfig != nil {
		return o.TLSConfig.Clone()
	}
	// Loopback only (see loopbackOnly): there is no one in between to
	// verify against.
	return &tls.Config{InsecureSkipVerify: true}
}

// Validate reports what Start would refuse in o.
func (o Options) Validate() error { return o.fill() }
