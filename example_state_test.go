//go:build unix

package tableflip_test

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/seed589fcc9d/tableflip"
)

// cacheState is what one generation hands the next. Version says which
// layout the writer used, so that a reader can refuse one it does not
// know instead of misreading it.
type cacheState struct {
	Version int
	Entries map[string]string
}

const cacheStateVersion = 2

func saveCache(w io.Writer, entries map[string]string) error {
	return gob.NewEncoder(w).Encode(cacheState{Version: cacheStateVersion, Entries: entries})
}

func loadCache(r io.Reader) (map[string]string, error) {
	var s cacheState
	if err := gob.NewDecoder(r).Decode(&s); err != nil {
		return nil, fmt.Errorf("reading cache state: %w", err)
	}
	if s.Version != cacheStateVersion {
		return nil, fmt.Errorf("cache state version %d, this program reads %d", s.Version, cacheStateVersion)
	}
	return s.Entries, nil
}

// A cache carried from one generation to the next: the old generation
// streams it while the new one starts, and the new one reads it before
// Ready. A new generation that cannot read the state exits, so the
// upgrade fails and the old one keeps serving with its cache.
func ExampleUpgrader_State() {
	cache := map[string]string{}
	upg, err := tableflip.New(tableflip.Options{
		WriteState: func(w io.Writer) error { return saveCache(w, cache) },
		OnUpgradeFailed: func(err error) {
			log.Println("upgrade failed; still serving:", err)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	r, err := upg.State()
	switch {
	case err == tableflip.ErrNoState:
		// A first start: begin with an empty cache.
	case err != nil:
		log.Fatal(err)
	default:
		if cache, err = loadCache(r); err != nil {
			log.Println(err)
			os.Exit(1)
		}
	}
	// ... Listen, Ready, serve, upgrade on a signal, as in the other
	// examples.
}

// The state format on its own: a version the reader does not know is
// refused, not misread.
func Example_stateVersion() {
	var stream bytes.Buffer
	saveCache(&stream, map[string]string{"k": "v"})
	entries, err := loadCache(&stream)
	fmt.Println(entries, err)

	stream.Reset()
	gob.NewEncoder(&stream).Encode(cacheState{Version: 3})
	_, err = loadCache(&stream)
	fmt.Println(err)
	// Output:
	// map[k:v] <nil>
	// cache state version 3, this program reads 2
}
