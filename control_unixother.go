//go:build unix && !linux && !darwin && !freebsd

package tableflip

import (
	"fmt"
	"runtime"
)

// getPeerCred: golang.org/x/sys/unix offers no peer credentials here, so
// the control socket serves nobody rather than everybody.
func getPeerCred(int) (peerCred, error) {
	return peerCred{}, fmt.Errorf("%w: no peer credentials on %s", ErrNotSupported, runtime.GOOS)
}
