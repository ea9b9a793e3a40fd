// Package handover is the wire contract between two generations of a
// program that uses tableflip: the running generation (the parent) and the
// new one it starts (the child).
//
// # Overview
//
// The parent creates a connected pair of Unix stream sockets, keeps one end
// and starts the child with the other end as an inherited descriptor. It
// tells the child where to find that end, and who it is, in a single
// environment variable:
//
//	TABLEFLIP_HANDOVER=v2;pid=<parent pid>;fd=<descriptor>;token=<32 hex digits>
//
// The child reads the variable, removes it from its environment and marks
// the descriptor close-on-exec at once, so that nothing of the protocol
// reaches a subprocess of the program. It checks that its parent process is
// the pid named, and then talks to the parent over the socket. Nothing else
// is inherited: the sockets being handed over travel as SCM_RIGHTS messages
// on that socket, so they never occupy fixed descriptor numbers (and never
// collide with the descriptors systemd passes from 3 on), and they arrive
// close-on-exec.
//
// # Frames
//
// Every message on the socket is a frame:
//
//	magic   4 bytes  "TFLP"
//	type    1 byte   one of the Frame* constants
//	length  4 bytes  big-endian length of the payload, at most MaxPayload
//	payload length bytes
//
// The magic and the layout of a frame never change between protocol
// versions, so that either side can always read, and answer, a frame it does
// not otherwise understand.
//
// The conversation, in order:
//
//  1. parent → child FrameHello: the protocol version (uint16), the token
//     (16 bytes) and the manifest: a uvarint count of entries, then for each
//     entry its kind (1 byte, one of the Kind* constants), its flags (1
//     byte, EntryHeld or 0), and the network, the address the program
//     asked for, and the address the socket is really bound to, each a
//     uvarint length followed by that many bytes;
//     then the parent's generation number (a uvarint: 1 for a process
//     started without a parent). A hello that ends after the manifest is
//     from a parent that predates the generation number, which reads as 0.
//     Then, optionally, the generations still alive (see Live): a uvarint
//     count, then for each its pid and generation number (uvarints) and
//     the Unix times in nanoseconds when it started and when it began to
//     drain (zigzag varints; 0 for the sender, which still serves). A
//     hello that ends after the generation number carries no such list,
//     which is what a parent that does not run several generations at
//     once sends, byte for byte as before the list existed.
//  2. parent → child FrameFDs, as many as needed: a uint16 count of
//     descriptors carried by this frame as SCM_RIGHTS, at most MaxFDsPerFrame.
//     The descriptors of all FrameFDs frames, in order, belong to the
//     manifest's entries in order.
//  3. child → parent FrameReady once the program has called Ready (see
//     Ready): the child's pid (uint32), then the absolute path of the PID
//     file the child's program names (a uvarint length and that many
//     bytes; length 0 for none).
//  4. parent → child FrameAck: the parent accepts the child as the new
//     generation and will stop serving. Before it sends FrameAck, the
//     parent has written the child's pid to that PID file: the file
//     names the child before the parent can exit, and before the parent
//     tells anyone (its caller, systemd) that the upgrade succeeded. A
//     parent that cannot write it sends FrameError instead.
//
// If the program hands on state, the manifest's last entry is of kind
// KindState: a second Unix stream socket on which the parent streams the
// state while the child initialises (see StateWriter).
//
// Either side may instead send FrameError with a UTF-8 message and close
// the socket; the parent also gives up when the child exits or misses its
// deadline. After FrameAck the parent keeps its end open until it exits, so
// the child learns that the parent has exited when it reads end of file.
//
// A child that finds a version it does not speak in the environment answers
// with FrameError and stops; the parent then fails the upgrade and keeps
// serving.
//
// # Versions
//
// Version 1 had the child write its PID file after FrameAck, so that the
// parent could exit before the file named the child; its FrameReady
// carried the pid alone. Version 2 moved the PID file to the parent's side
// of FrameAck. The two are refused by each other (an upgrade between them
// fails and the old generation serves on; restart instead).
package handover

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Version is the protocol version this package speaks.
const Version = 2

// EnvVar is the environment variable through which a parent names the
// handover socket to its child.
const EnvVar = "TABLEFLIP_HANDOVER"

// Magic starts every frame.
const Magic = "TFLP"

// Frame types.
const (
	FrameHello = 'H'
	FrameFDs   = 'F'
	FrameReady = 'R'
	FrameAck   = 'A'
	FrameError = 'X'
)

// Kinds of manifest entries.
const (
	KindListener   = 'L'
	KindPacketConn = 'P'
	KindConn       = 'C'
	KindFile       = 'F'
	// KindState is the socket that carries the state stream (see
	// StateWriter). It has no network or address.
	KindState = 'S'
)

const (
	// MaxPayload bounds the payload of one frame: a manifest of tens of
	// thousands of sockets fits, a corrupt length does not make the reader
	// allocate gigabytes.
	MaxPayload = 16 << 20
	// MaxFDsPerFrame is how many descriptors one FrameFDs carries, below
	// the kernel's limit for one message (253 on Linux).
	MaxFDsPerFrame = 200
	// TokenSize is the length of the token in bytes.
	TokenSize = 16
	// maxString bounds a string in the manifest (a network name or an
	// address; Unix socket paths are far shorter).
	maxString  = 4096
	headerSize = len(Magic) + 1 + 4
)

// ErrMalformed is wrapped by every error about data that does not follow
// the protocol.
var ErrMalformed = errors.New("handover: malformed data")

// ErrVersion is wrapped by the error for a protocol version this package
// does not speak.
var ErrVersion = errors.New("handover: unsupported protocol version")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// PeerError is a FrameError received from the other side.
type PeerError struct {
	Message string
}

// Error describes the failure.
func (e *PeerError) Error() string { return "handover: peer reported: " + e.Message }

// Env is what the environment variable carries.
type Env struct {
	Version int
	PID     int
	FD      int
	Token   [TokenSize]byte
}

// String formats e as the value of EnvVar.
func (e Env) String() string {
	return fmt.Sprintf("v%d;pid=%d;fd=%d;token=%s", e.Version, e.PID, e.FD, hex.EncodeToString(e.Token[:]))
}

// ParseEnv parses the value of EnvVar. A value of another version is
// returned with an error wrapping ErrVersion and only Version, PID and FD
// set, so that the caller can still answer the parent.
func ParseEnv(s string) (Env, error) {
	var e Env
	fields := strings.Split(s, ";")
	v, ok := strings.CutPrefix(fields[0], "v")
	if !ok {
		return e, malformed("%s=%q does not start with a version", EnvVar, s)
	}
	version, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return e, malformed("%s=%q: version %q is not a number", EnvVar, s, v)
	}
	e.Version = int(version)
	seen := map[string]bool{}
	var token string
	for _, f := range fields[1:] {
		name, value, ok := strings.Cut(f, "=")
		if !ok || seen[name] {
			if e.Version != Version {
				continue
			}
			return e, malformed("%s=%q: bad field %q", EnvVar, s, f)
		}
		seen[name] = true
		switch name {
		case "pid", "fd":
			n, err := strconv.ParseUint(value, 10, 31)
			if err != nil {
				return e, malformed("%s=%q: %s %q is not a number", EnvVar, s, name, value)
			}
			if name == "pid" {
				e.PID = int(n)
			} else {
				e.FD = int(n)
			}
		case "token":
			token = value
		default:
			if e.Version == Version {
				return e, malformed("%s=%q: unknown field %q", EnvVar, s, name)
			}
		}
	}
	if !seen["pid"] || !seen["fd"] || e.PID == 0 {
		return e, malformed("%s=%q: pid and fd are required", EnvVar, s)
	}
	if e.Version != Version {
		return e, fmt.Errorf("%w %d (this program speaks %d)", ErrVersion, e.Version, Version)
	}
	if e.FD < 3 {
		return e, malformed("%s=%q: fd %d is a standard stream", EnvVar, s, e.FD)
	}
	b, err := hex.DecodeString(token)
	if err != nil || len(b) != TokenSize {
		return e, malformed("%s=%q: token is not %d hex digits", EnvVar, s, 2*TokenSize)
	}
	copy(e.Token[:], b)
	return e, nil
}

// Entry is one socket or file in the manifest.
type Entry struct {
	Kind    byte
	Network string
	// Addr is the address the program asked for, such as "127.0.0.1:0",
	// or the name of a file.
	Addr string
	// Bound is the address the socket is really bound to, such as
	// "127.0.0.1:41234", or "" where that is the same as Addr.
	Bound string
	// Held is set on a Unix socket whose file belongs to systemd (socket
	// activation or the fd store): no generation removes it.
	Held bool
}

// EntryHeld is the flag of an Entry whose Held is set.
const EntryHeld = 1 << 0

// Hello is the payload of FrameHello.
type Hello struct {
	Version int
	Token   [TokenSize]byte
	Entries []Entry
	// Generation is the parent's generation number, or 0 if unknown.
	Generation uint64
	// Live lists the generations alive when the parent sent the hello,
	// oldest first, the parent itself last. Empty (and then not
	// encoded) unless the parent allows several generations at once.
	Live []LiveGeneration
}

// LiveGeneration describes one generation in Hello.Live.
type LiveGeneration struct {
	PID        int
	Generation uint64
	// Started and Draining are Unix times in nanoseconds: when the
	// generation started, and when a newer one took over from it (0 if
	// none has yet).
	Started, Draining int64
}

// maxPID bounds a pid on the wire: pids are positive int32s everywhere.
const maxPID = 1<<31 - 1

// MarshalBinary encodes h as the payload of FrameHello.
func (h *Hello) MarshalBinary() ([]byte, error) {
	size := 2 + TokenSize + 2*binary.MaxVarintLen64
	for _, e := range h.Entries {
		size += 2 + 3*binary.MaxVarintLen64 + len(e.Network) + len(e.Addr) + len(e.Bound)
	}
	b := make([]byte, 0, size)
	b = binary.BigEndian.AppendUint16(b, uint16(h.Version))
	b = append(b, h.Token[:]...)
	b = binary.AppendUvarint(b, uint64(len(h.Entries)))
	for _, e := range h.Entries {
		if !validKind(e.Kind) {
			return nil, fmt.Errorf("handover: entry %s %s has unknown kind %q", e.Network, e.Addr, e.Kind)
		}
		var flags byte
		if e.Held {
			flags |= EntryHeld
		}
		b = append(b, e.Kind, flags)
		for _, s := range [...]string{e.Network, e.Addr, e.Bound} {
			if len(s) > maxString {
				return nil, fmt.Errorf("handover: entry %s %s: string of %d bytes is longer than %d", e.Network, e.Addr, len(s), maxString)
			}
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	b = binary.AppendUvarint(b, h.Generation)
	if len(h.Live) > 0 {
		b = binary.AppendUvarint(b, uint64(len(h.Live)))
		for _, g := range h.Live {
			if g.PID <= 0 || g.PID > maxPID {
				return nil, fmt.Errorf("handover: live generation with pid %d", g.PID)
			}
			b = binary.AppendUvarint(b, uint64(g.PID))
			b = binary.AppendUvarint(b, g.Generation)
			b = binary.AppendVarint(b, g.Started)
			b = binary.AppendVarint(b, g.Draining)
		}
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("handover: manifest of %d bytes is larger than %d", len(b), MaxPayload)
	}
	return b, nil
}

func validKind(k byte) bool {
	switch k {
	case KindListener, KindPacketConn, KindConn, KindFile, KindState:
		return true
	}
	return false
}

// UnmarshalBinary decodes the payload of FrameHello. It checks the version
// first, so that a later version's hello is reported as ErrVersion.
func (h *Hello) UnmarshalBinary(b []byte) error {
	r := bytes.NewReader(b)
	var version uint16
	if err := binary.Read(r, binary.BigEndian, &version); err != nil {
		return malformed("hello of %d bytes has no version", len(b))
	}
	h.Version = int(version)
	if h.Version != Version {
		return fmt.Errorf("%w %d in hello (this program speaks %d)", ErrVersion, h.Version, Version)
	}
	if _, err := io.ReadFull(r, h.Token[:]); err != nil {
		return malformed("hello is truncated in its token")
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return malformed("hello is truncated in its entry count")
	}
	// Every entry takes at least five bytes: a bound on the count that
	// keeps a corrupt count from allocating.
	if n > uint64(r.Len())/5 {
		return malformed("hello claims %d entries in %d bytes", n, r.Len())
	}
	h.Entries = make([]Entry, 0, n)
	for i := range n {
		var e Entry
		kind, err := r.ReadByte()
		if err != nil {
			return malformed("entry %d is truncated", i)
		}
		if !validKind(kind) {
			return malformed("entry %d has unknown kind %q", i, kind)
		}
		e.Kind = kind
		flags, err := r.ReadByte()
		if err != nil {
			return malformed("entry %d is truncated", i)
		}
		if flags&^EntryHeld != 0 {
			return malformed("entry %d has unknown flags %#x", i, flags)
		}
		e.Held = flags&EntryHeld != 0
		for _, s := range [...]*string{&e.Network, &e.Addr, &e.Bound} {
			if *s, err = readString(r); err != nil {
				return malformed("entry %d: %v", i, err)
			}
		}
		if e.Network == "" && e.Kind != KindFile && e.Kind != KindState {
			return malformed("entry %d (%s) has no network", i, e.Addr)
		}
		h.Entries = append(h.Entries, e)
	}
	if r.Len() > 0 {
		if h.Generation, err = binary.ReadUvarint(r); err != nil {
			return malformed("hello is truncated in its generation")
		}
	}
	h.Live = nil
	if r.Len() > 0 {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return malformed("hello is truncated in its count of live generations")
		}
		// Every generation takes at least four bytes.
		if n > uint64(r.Len())/4 {
			return malformed("hello claims %d live generations in %d bytes", n, r.Len())
		}
		h.Live = make([]LiveGeneration, 0, n)
		for i := range n {
			var g LiveGeneration
			pid, err1 := binary.ReadUvarint(r)
			gen, err2 := binary.ReadUvarint(r)
			started, err3 := binary.ReadVarint(r)
			draining, err4 := binary.ReadVarint(r)
			if err := errors.Join(err1, err2, err3, err4); err != nil {
				return malformed("live generation %d is truncated", i)
			}
			if pid == 0 || pid > maxPID {
				return malformed("live generation %d has pid %d", i, pid)
			}
			g.PID, g.Generation, g.Started, g.Draining = int(pid), gen, started, draining
			h.Live = append(h.Live, g)
		}
	}
	if r.Len() != 0 {
		return malformed("%d bytes after the live generations", r.Len())
	}
	return nil
}

func readString(r *bytes.Reader) (string, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", errors.New("truncated string length")
	}
	if n > maxString {
		return "", fmt.Errorf("string of %d bytes is longer than %d", n, maxString)
	}
	if n > uint64(r.Len()) {
		return "", fmt.Errorf("string of %d bytes but only %d left", n, r.Len())
	}
	b := make([]byte, n)
	_, _ = r.Read(b)
	return string(b), nil
}

// Ready is the payload of FrameReady.
type Ready struct {
	PID int
	// PIDFile is the absolute path of the PID file that the parent
	// writes the child's pid to before it acknowledges; "" for none.
	PIDFile string
}

// MarshalBinary encodes r as the payload of FrameReady.
func (r *Ready) MarshalBinary() ([]byte, error) {
	if r.PID <= 0 || r.PID > maxPID {
		return nil, fmt.Errorf("handover: ready from pid %d", r.PID)
	}
	if len(r.PIDFile) > maxString {
		return nil, fmt.Errorf("handover: PID file path of %d bytes is longer than %d", len(r.PIDFile), maxString)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(r.PID))
	b = binary.AppendUvarint(b, uint64(len(r.PIDFile)))
	return append(b, r.PIDFile...), nil
}

// UnmarshalBinary decodes the payload of FrameReady.
func (r *Ready) UnmarshalBinary(b []byte) error {
	if len(b) < 4 {
		return malformed("ready of %d bytes has no pid", len(b))
	}
	pid := binary.BigEndian.Uint32(b)
	if pid == 0 || pid > maxPID {
		return malformed("ready from pid %d", pid)
	}
	rd := bytes.NewReader(b[4:])
	path, err := readString(rd)
	if err != nil {
		return malformed("ready: PID file: %v", err)
	}
	if rd.Len() != 0 {
		return malformed("%d bytes after the ready frame's PID file", rd.Len())
	}
	if path != "" && path[0] != '/' {
		return malformed("ready: PID file %q is not an absolute path", path)
	}
	r.PID, r.PIDFile = int(pid), path
	return nil
}

// AppendFrame appends a frame of the given type and payload to b.
func AppendFrame(b []byte, typ byte, payload []byte) []byte {
	b = append(b, Magic...)
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// ReadFrameHeader reads and checks the header of the next frame from r
// and returns its type and payload length.
func ReadFrameHeader(r io.Reader) (typ byte, length int, err error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, malformed("frame header is truncated")
		}
		return 0, 0, err
	}
	return parseHeader(h[:])
}

func parseHeader(h []byte) (typ byte, length int, err error) {
	if string(h[:len(Magic)]) != Magic {
		return 0, 0, malformed("frame starts with %q, not %q", h[:len(Magic)], Magic)
	}
	typ = h[len(Magic)]
	n := binary.BigEndian.Uint32(h[len(Magic)+1:])
	if n > MaxPayload {
		return 0, 0, malformed("frame %q of %d bytes is larger than %d", typ, n, MaxPayload)
	}
	return typ, int(n), nil
}

// ReadFrame reads the next whole frame from r.
func ReadFrame(r io.Reader) (typ byte, payload []byte, err error) {
	typ, n, err := ReadFrameHeader(r)
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, malformed("frame %q is truncated after %d bytes header", typ, headerSize)
	}
	return typ, payload, nil
}
