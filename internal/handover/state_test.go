package handover

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, MaxStateChunk - 1, MaxStateChunk, 3*MaxStateChunk + 5} {
		want := bytes.Repeat([]byte{'s'}, size)
		var stream bytes.Buffer
		w := NewStateWriter(&stream)
		w.Write(want[:size/2])
		w.Write(want[size/2:])
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(NewStateReader(&stream))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%d bytes: read %d bytes, %v", size, len(got), err)
		}
	}
}

func TestStateTruncated(t *testing.T) {
	var stream bytes.Buffer
	w := NewStateWriter(&stream)
	w.Write(bytes.Repeat([]byte{'s'}, MaxStateChunk+10))
	// No Close: the writer died. Every cut of the stream is an error.
	full := stream.Bytes()
	for _, cut := range []int{0, 2, 4, 100, len(full)} {
		_, err := io.ReadAll(NewStateReader(bytes.NewReader(full[:cut])))
		if !errors.Is(err, ErrStateTruncated) {
			t.Errorf("stream cut at %d of %d bytes: %v, want ErrStateTruncated", cut, len(full), err)
		}
	}
}

func TestStateAbort(t *testing.T) {
	var stream bytes.Buffer
	w := NewStateWriter(&stream)
	w.Write([]byte("partial"))
	w.Abort(errors.New("disk on fire"))
	_, err := io.ReadAll(NewStateReader(&stream))
	var pe *PeerError
	if !errors.As(err, &pe) || !strings.Contains(pe.Message, "disk on fire") {
		t.Errorf("aborted state: %v, want the writer's error", err)
	}
}

// FuzzStateReader: any stream reads as state, an error, or EOF; never a
// panic, and never more than the stream holds.
func FuzzStateReader(f *testing.F) {
	var stream bytes.Buffer
	w := NewStateWriter(&stream)
	w.Write([]byte("hello"))
	w.Close()
	f.Add(stream.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, 'h', 'i'})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, _ := io.ReadAll(NewStateReader(bytes.NewReader(b)))
		if len(got) > len(b) {
			t.Fatalf("read %d bytes from a stream of %d", len(got), len(b))
		}
	})
}
