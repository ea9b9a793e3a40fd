package handover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The state stream.
//
// When the program hands state on, the parent also passes a second Unix
// stream socket, as the manifest entry of kind KindState, and streams the
// state on it in chunks:
//
//	chunk  uint32 length (1 to MaxStateChunk), then length bytes
//	end    uint32 0: the state is complete
//	abort  uint32 0xFFFFFFFF, uint32 length, then a UTF-8 message: the
//	       parent's writer failed
//
// A stream that ends without an end or abort marker is truncated: the
// parent died while writing. The reader reports that as an error, never
// as short state.

// MaxStateChunk bounds one chunk of state.
const MaxStateChunk = 1 << 20

const abortMarker = 0xFFFFFFFF

// maxAbortMessage bounds the message of an abort.
const maxAbortMessage = 64 << 10

// ErrStateTruncated is wrapped by the error for a state stream that ended
// without its end marker.
var ErrStateTruncated = errors.New("handover: state stream truncated")

// StateWriter writes a state stream. Close marks it complete; Abort marks
// it failed. Neither closes the underlying writer.
type StateWriter struct {
	w   io.Writer
	buf []byte
	err error
}

// NewStateWriter returns a StateWriter on w, which it buffers in chunks
// of MaxStateChunk.
func NewStateWriter(w io.Writer) *StateWriter {
	return &StateWriter{w: w, buf: make([]byte, 4, 4+MaxStateChunk)}
}

// Write buffers p, sending each full chunk.
func (s *StateWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if s.err != nil {
			return n, s.err
		}
		k := min(len(p), cap(s.buf)-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(s.buf) == cap(s.buf) {
			s.flush()
		}
	}
	return n, s.err
}

func (s *StateWriter) flush() {
	if s.err != nil || len(s.buf) == 4 {
		return
	}
	binary.BigEndian.PutUint32(s.buf, uint32(len(s.buf)-4))
	_, s.err = s.w.Write(s.buf)
	s.buf = s.buf[:4]
}

// Close sends what is buffered and the end marker.
func (s *StateWriter) Close() error {
	s.flush()
	if s.err == nil {
		_, s.err = s.w.Write([]byte{0, 0, 0, 0})
	}
	return s.err
}

// Abort discards what is buffered and sends an abort with the message of
// err.
func (s *StateWriter) Abort(err error) error {
	msg := err.Error()
	if len(msg) > maxAbortMessage {
		msg = msg[:maxAbortMessage]
	}
	b := binary.BigEndian.AppendUint32(nil, abortMarker)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg)))
	_, werr := s.w.Write(append(b, msg...))
	return werr
}

// StateReader reads a state stream.
type StateReader struct {
	r    io.Reader
	left int // bytes left in the current chunk
	err  error
}

// NewStateReader returns a reader of the state stream on r.
func NewStateReader(r io.Reader) *StateReader { return &StateReader{r: r} }

// Read returns state. At the end marker it returns io.EOF; after an
// abort, an error with the parent's message; at a premature end of the
// stream, an error wrapping ErrStateTruncated.
func (s *StateReader) Read(p []byte) (int, error) {
	for s.left == 0 {
		if s.err != nil {
			return 0, s.err
		}
		s.err = s.next()
	}
	if len(p) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: in a chunk with %d bytes left", ErrStateTruncated, s.left)
		}
		s.err = err
		if n > 0 {
			return n, nil
		}
	}
	return n, err
}

// next reads the header of the next chunk.
func (s *StateReader) next() error {
	var h [4]byte
	if _, err := io.ReadFull(s.r, h[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: no end marker", ErrStateTruncated)
		}
		return err
	}
	switch n := binary.BigEndian.Uint32(h[:]); {
	case n == 0:
		return io.EOF
	case n == abortMarker:
		if _, err := io.ReadFull(s.r, h[:]); err != nil {
			return fmt.Errorf("%w: in an abort", ErrStateTruncated)
		}
		size := binary.BigEndian.Uint32(h[:])
		if size > maxAbortMessage {
			return malformed("abort message of %d bytes", size)
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(s.r, msg); err != nil {
			return fmt.Errorf("%w: in an abort", ErrStateTruncated)
		}
		return &PeerError{Message: "state writer failed: " + string(msg)}
	case n > MaxStateChunk:
		return malformed("state chunk of %d bytes is larger than %d", n, MaxStateChunk)
	default:
		s.left = int(n)
		return nil
	}
}
