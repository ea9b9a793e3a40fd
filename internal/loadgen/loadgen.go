// Package loadgen puts a server on loopback under load and records what
// every request saw, so that a report can say exactly which requests
// failed, how, and when. It speaks HTTP (http:// and https:// URLs, and
// unary gRPC calls over HTTP/2), a line protocol over TCP (tcp://: each
// exchange sends a line and expects the same line back) and datagrams over
// UDP (udp://: each exchange sends a datagram and expects the same one
// back).
//
// The clients never retry: a request that fails is recorded as a failure
// of a named kind (see Outcome), because a retry hides exactly the losses
// that a graceful upgrade must not cause. The exceptions are ModeGoClient,
// ModeHTTP2 and ModeGRPC, which use net/http's own client with its own
// retry rules, there to show what most Go programs would see.
//
// A load is bounded: it stops by itself after Options.Duration or after
// Options.MaxRequests requests, whichever comes first, and it only ever
// connects to loopback addresses.
package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
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
	// ModeGRPC makes unary gRPC calls with net/http's Client over HTTP/2:
	// the URL's path names the method (/package.Service/Method), Body is
	// the serialized request message (empty by default, which is a valid
	// message of every type), and a call succeeds when the server answers
	// with one message and grpc-status 0. Over http:// it speaks HTTP/2
	// without TLS (h2c with prior knowledge, as gRPC's insecure
	// credentials do), over https:// HTTP/2 negotiated by TLS.
	ModeGRPC Mode = "grpc"

	// ModeLine opens a new TCP connection for every exchange: it sends a
	// line, reads a line back, which must be the same, and closes.
	ModeLine Mode = "line"
	// ModeLongLived holds each client's TCP connection open and sends a
	// line on it every Options.Pace, reading the same line back. A
	// connection the server ends is recorded (Record.Ended) and replaced.
	ModeLongLived Mode = "longlived"

	// ModeDatagram sends a UDP datagram and waits for the same datagram
	// back, one at a time per client. A datagram never answered is lost
	// (a Timeout); one still unanswered when the load stops is waited
	// for, up to Options.Timeout, and recorded.
	ModeDatagram Mode = "datagram"
)

// Modes lists the modes in the order reports show them.
func Modes() []Mode {
	return []Mode{ModeKeepAlive, ModeNewConn, ModeGoClient, ModeHTTP2, ModeGRPC, ModeLine, ModeLongLived, ModeDatagram}
}

// ModesFor lists the modes that go with URLs of scheme ("http", "https",
// "tcp" or "udp"), in the order of Modes, or nil for another scheme.
func ModesFor(scheme string) []Mode {
	switch scheme {
	case "http":
		return []Mode{ModeKeepAlive, ModeNewConn, ModeGoClient, ModeGRPC}
	case "https":
		return []Mode{ModeKeepAlive, ModeNewConn, ModeGoClient, ModeHTTP2, ModeGRPC}
	case "tcp":
		return []Mode{ModeLine, ModeLongLived}
	case "udp":
		return []Mode{ModeDatagram}
	}
	return nil
}

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes() {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("loadgen: unknown mode %q (want one of %s)", s, joinModes(Modes()))
}

// Defaults for the zero fields of Options.
const (
	DefaultConns       = 8
	DefaultDuration    = 30 * time.Second
	DefaultMaxRequests = 2_000_000
	DefaultTimeout     = 10 * time.Second
	DefaultPace        = 50 * time.Millisecond
	// DefaultLine is what a line or a datagram carries when Body is
	// empty, before the client and sequence numbers that make each one
	// unique.
	DefaultLine = "tableflip-loadgen"
	// MaxDatagram is the longest Body that ModeDatagram accepts.
	MaxDatagram = 60000
)

// Options configure a load. Zero fields take the documented defaults.
type Options struct {
	// URL is the target, http://, https://, tcp:// or udp://, on a
	// loopback host (127.0.0.0/8, ::1 or localhost) and with a port.
	// Required.
	URL string
	// Mode defaults to ModeKeepAlive for http and https URLs, ModeLine
	// for tcp and ModeDatagram for udp; ModesFor lists the modes each
	// scheme takes.
	Mode Mode
	// Conns is the number of concurrent clients, each with at most one
	// request in flight. Defaults to DefaultConns.
	Conns int
	// Method defaults to GET, or POST when Body is not empty. ModeGRPC
	// always POSTs; the other protocols have no method.
	Method string
	// Body is sent with every request. In ModeLine and ModeLongLived it
	// begins each line, and must not hold a newline; in ModeDatagram it
	// begins each datagram (at most MaxDatagram bytes). Each line and
	// datagram ends with the client's number and a sequence number, so
	// that an answer meant for another is told apart. Empty means
	// DefaultLine there.
	Body []byte
	// Duration bounds the load in time. Defaults to DefaultDuration.
	Duration time.Duration
	// MaxRequests bounds the load in requests. Defaults to
	// DefaultMaxRequests (about 50 MB of records).
	MaxRequests int
	// Timeout bounds each request, connecting included. Defaults to
	// DefaultTimeout.
	Timeout time.Duration
	// Pace is how long a ModeLongLived client waits after an exchange
	// before the next one. Defaults to DefaultPace; other modes send the
	// next request at once.
	Pace time.Duration
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
	// Idle is how long the request's connection had been idle when the
	// request went out on it: 0 for a new connection, or in modes that
	// do not reuse connections. A server that closes connections idle
	// longer than some grace cannot help racing with a request sent
	// after that long.
	Idle time.Duration
	// Ended reports, in ModeLongLived, that the server ended the
	// connection with this record: either between two exchanges (Outcome
	// Cut, with a zero Latency at the moment the client saw the end), or
	// during this exchange, which then failed with the way it ended (EOF,
	// Reset, Truncated, Write).
	Ended bool
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
	Requests int64 // finished requests, failed ones included (a Cut is none)
	Failed   int64 // failed requests, not counting those in Ended
	Ended    int64 // records with Record.Ended: connections the server ended
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
	ended    atomic.Int64
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
			c := newClient(i)
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

// Probe waits until the server at opts.URL answers a request of
// opts.Mode, trying again every ProbeInterval, or until ctx ends, when it
// returns the last attempt's error. Any answer will do, an error status
// or a line that is not the one sent included: Probe asks whether the
// server is up, and the load will say whether it answers well. Each
// attempt is bounded by opts.Timeout.
func Probe(ctx context.Context, opts Options) error {
	if err := opts.fill(); err != nil {
		return err
	}
	u, _ := url.Parse(opts.URL) // checked by fill
	newClient, err := clientFactory(u, opts)
	if err != nil {
		return err
	}
	c := newClient(0)
	defer c.close()
	for {
		out, err := c.do(ctx)
		switch out {
		case OK, Status, Malformed, Protocol:
			return nil
		}
		if err == nil {
			err = errors.New(out.Describe())
		}
		if pause(ctx, ProbeInterval); ctx.Err() != nil {
			return err
		}
	}
}

// ProbeInterval is how often Probe tries.
const ProbeInterval = 10 * time.Millisecond

// Done is closed when every client has stopped.
func (l *Load) Done() <-chan struct{} { return l.done }

// Counts returns the totals so far.
func (l *Load) Counts() Counts {
	return Counts{Requests: l.finished.Load(), Failed: l.failed.Load(), Ended: l.ended.Load()}
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
	held, _ := c.(heldConn)
	add := func(rec Record, err error) {
		if rec.Outcome != OK && err != nil {
			l.mu.Lock()
			if _, ok := l.examples[rec.Outcome]; !ok {
				l.examples[rec.Outcome] = err.Error()
			}
			l.mu.Unlock()
		}
		recs = append(recs, rec)
		if rec.Outcome != Cut {
			l.finished.Add(1)
		}
		switch {
		case rec.Ended:
			l.ended.Add(1)
		case rec.Outcome != OK:
			l.failed.Add(1)
		}
	}
	// cut records a connection that the server ended between exchanges.
	cut := func() {
		if held == nil {
			return
		}
		if at, err, ok := held.endedIdle(); ok {
			add(Record{Start: at.Sub(l.started), Outcome: Cut, Ended: true}, err)
		}
	}
	for ctx.Err() == nil {
		if l.issued.Add(1) > int64(l.opts.MaxRequests) {
			l.limit.Store(true)
			l.cancel()
			break
		}
		cut()
		start := time.Now()
		out, err := c.do(ctx)
		lat := time.Since(start)
		if out != OK && ctx.Err() != nil && !finishesInFlight(l.opts.Mode) {
			// Aborted by the end of the load, not by the server.
			break
		}
		rec := Record{
			Start:   start.Sub(l.started),
			Latency: lat,
			Outcome: out,
			Ended:   held != nil && out != OK && held.endedByServer(),
		}
		if i, ok := c.(idler); ok {
			rec.Idle = i.lastIdle()
		}
		add(rec, err)
		switch {
		case out == Connect:
			pause(ctx, connectPause)
		case l.opts.Mode == ModeLongLived:
			pause(ctx, l.opts.Pace)
		}
	}
	cut() // one that ended while the client paced
	return recs
}

// pause waits for d or the end of ctx. It paces the clients; it never
// stands in for waiting on an event.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// finishesInFlight reports whether a request in flight when the load
// stops is waited for and recorded instead of aborted: a lost datagram
// shows only as silence, so aborting it would hide the loss.
func finishesInFlight(m Mode) bool { return m == ModeDatagram }

func (o *Options) fill() error {
	u, err := url.Parse(o.URL)
	if err != nil {
		return fmt.Errorf("loadgen: bad URL: %w", err)
	}
	modes := ModesFor(u.Scheme)
	if modes == nil {
		return fmt.Errorf("loadgen: URL %q: scheme must be http, https, tcp or udp", o.URL)
	}
	if o.Mode == "" {
		o.Mode = modes[0]
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return err
	}
	if !slices.Contains(modes, o.Mode) {
		if o.Mode == ModeHTTP2 {
			return fmt.Errorf("loadgen: mode h2 needs an https URL, not %q", o.URL)
		}
		return fmt.Errorf("loadgen: mode %s does not go with URL %q (a %s URL takes %s)", o.Mode, o.URL, u.Scheme, joinModes(modes))
	}
	if o.Conns <= 0 {
		o.Conns = DefaultConns
	}
	switch {
	case o.Mode == ModeGRPC:
		o.Method = "POST"
	case u.Scheme == "tcp" || u.Scheme == "udp":
		if o.Method != "" {
			return fmt.Errorf("loadgen: URL %q: a method is only for HTTP", o.URL)
		}
		if len(o.Body) == 0 {
			o.Body = []byte(DefaultLine)
		}
		if u.Scheme == "tcp" && bytes.ContainsAny(o.Body, "\r\n") {
			return fmt.Errorf("loadgen: URL %q: the body begins a line and must not hold a line break", o.URL)
		}
		if len(o.Body) > MaxDatagram {
			return fmt.Errorf("loadgen: URL %q: a body of %d bytes is longer than %d", o.URL, len(o.Body), MaxDatagram)
		}
	case o.Method == "":
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
	if o.Pace <= 0 {
		o.Pace = DefaultPace
	}
	if u.Port() == "" {
		return fmt.Errorf("loadgen: URL %q has no port", o.URL)
	}
	if !IsLoopbackHost(u.Hostname()) {
		return fmt.Errorf("loadgen: URL %q: host %q is not a loopback address", o.URL, u.Hostname())
	}
	return nil
}

func joinModes(ms []Mode) string {
	var names []string
	for _, m := range ms {
		names = append(names, string(m))
	}
	return strings.Join(names, ", ")
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
