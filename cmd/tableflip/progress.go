package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress shows how a check is going: one line rewritten in place on a
// terminal, plain lines otherwise (a log file or CI output).
type progress struct {
	w        io.Writer
	terminal bool

	mu       sync.Mutex // guards the fields below
	state    func() progressState
	lastLen  int
	stop     chan struct{}
	stopped  chan struct{}
	finished bool
}

type progressState struct {
	upgrades, wanted int
	requests, failed int64
	ended            int64 // long-lived connections the server ended
	gen, pid         int
}

func (s progressState) String() string {
	want := ""
	if s.wanted > 0 {
		want = fmt.Sprintf("/%d", s.wanted)
	}
	ended := ""
	if s.ended > 0 {
		ended = fmt.Sprintf("  connections ended by the server %d", s.ended)
	}
	return fmt.Sprintf("upgrades %d%s  requests %d  failed %d%s  generation %d (pid %d)",
		s.upgrades, want, s.requests, s.failed, ended, s.gen, s.pid)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, terminal: isTerminal(w)}
}

// start begins showing state, which is called from another goroutine.
func (p *progress) start(state func() progressState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = state
	if !p.terminal || p.stop != nil {
		return
	}
	p.stop, p.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.stopped)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.mu.Lock()
				p.redraw()
				p.mu.Unlock()
			case <-p.stop:
				return
			}
		}
	}()
}

func (p *progress) redraw() {
	if p.state == nil || p.finished {
		return
	}
	line := p.state().String()
	pad := max(0, p.lastLen-len(line))
	fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
	p.lastLen = len(line)
}

// event reports something that happened: on a terminal it redraws the
// line, elsewhere it prints msg with the state.
func (p *progress) event(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	if p.terminal {
		p.redraw()
		return
	}
	if p.state != nil {
		msg += "; " + p.state().String()
	}
	fmt.Fprintln(p.w, msg)
}

// finish stops the line and moves past it.
func (p *progress) finish() {
	p.mu.Lock()
	stop, stopped := p.stop, p.stopped
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-stopped
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminal && p.state != nil && !p.finished {
		p.redraw()
		fmt.Fprintln(p.w)
	}
	p.finished = true
}
