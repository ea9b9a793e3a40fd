package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
)

// Outcome is what happened to one request: OK or the kind of failure.
type Outcome uint8

// Outcomes. The failure kinds are ordered roughly by where in a request's
// life they happen.
const (
	OK        Outcome = iota
	Connect           // the connection could not be opened (refused, handshake failed)
	Write             // the request could not be written
	EOF               // the connection was closed before any byte of the response
	Reset             // the connection was reset by the peer
	Truncated         // the connection ended in the middle of the response
	Malformed         // the response was not valid HTTP
	Status            // the response had a 4xx or 5xx status
	Timeout           // no complete response within Options.Timeout
	Protocol          // HTTP/2 was asked for but the server answered with HTTP/1
	Cut               // the server closed a long-lived connection between exchanges (ModeLongLived)
	Other             // any other error
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	OK:        "ok",
	Connect:   "connect",
	Write:     "write",
	EOF:       "eof",
	Reset:     "reset",
	Truncated: "truncated",
	Malformed: "malformed",
	Status:    "status",
	Timeout:   "timeout",
	Protocol:  "protocol",
	Cut:       "cut",
	Other:     "other",
}

var outcomeDescriptions = [numOutcomes]string{
	OK:        "answered",
	Connect:   "connection could not be opened",
	Write:     "request could not be written",
	EOF:       "connection closed before any response",
	Reset:     "connection reset by the server",
	Truncated: "response cut short",
	Malformed: "malformed response, or not the line or datagram sent",
	Status:    "answered with an error status (HTTP 4xx/5xx, or a gRPC status other than OK)",
	Timeout:   "no response in time (a datagram: lost)",
	Protocol:  "answered without HTTP/2",
	Cut:       "long-lived connection closed by the server between exchanges",
	Other:     "other error",
}

// Outcomes lists every outcome, OK first, in a stable order for reports.
func Outcomes() []Outcome {
	out := make([]Outcome, numOutcomes)
	for i := range out {
		out[i] = Outcome(i)
	}
	return out
}

// String returns the short name of o ("ok", "eof", "reset", …).
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Describe returns a phrase that explains o to a person.
func (o Outcome) Describe() string {
	if o < numOutcomes {
		return outcomeDescriptions[o]
	}
	return o.String()
}

// MarshalText encodes o as its short name.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText decodes a short name written by MarshalText.
func (o *Outcome) UnmarshalText(b []byte) error {
	for i, n := range outcomeNames {
		if n == string(b) {
			*o = Outcome(i)
			return nil
		}
	}
	return fmt.Errorf("loadgen: unknown outcome %q", b)
}

// cutShort names the failure of a response that had begun to arrive.
func cutShort(err error) Outcome {
	if o := classify(err, Truncated); o != EOF && o != Other {
		return o
	}
	return Truncated
}

// classify maps an error from reading a response to an outcome. fallback is
// used for errors that say nothing more specific.
func classify(err error, fallback Outcome) Outcome {
	var ne net.Error
	var re tls.RecordHeaderError
	switch {
	case err == nil:
		return OK
	case errors.Is(err, syscall.ECONNREFUSED):
		return Connect
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED):
		return Reset
	case errors.Is(err, syscall.EPIPE):
		return Write
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Timeout
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Truncated
	case errors.Is(err, io.EOF):
		return EOF
	case errors.As(err, &re):
		return Malformed
	case strings.Contains(err.Error(), "server closed idle connection"):
		// net/http's errServerClosedIdle, not exported: the server closed
		// a kept-alive connection as the client sent on it.
		return EOF
	}
	return fallback
}
