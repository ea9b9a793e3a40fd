package tableflip

import (
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzControlRequest feeds the control socket's request reader whatever a
// local client may send: it never panics nor hangs, and either returns a
// request of this version or a bad-request error named as the package's.
func FuzzControlRequest(f *testing.F) {
	for _, seed := range []string{
		`{"v":1,"cmd":"status"}` + "\n",
		`{"v":1,"cmd":"upgrade"}` + "\n",
		`{"v":1,"cmd":"upgrade","extra":[1,2,{"x":null}]}` + "\r\n",
		`{"v":2,"cmd":"status"}` + "\n",
		`{"cmd":"status"}`,
		`{"v":1,`,
		"\n",
		"",
		`{"v":1e400}` + "\n",
		`{"v":"1"}` + "\n",
		`[1]` + "\n",
		strings.Repeat(" ", MaxControlRequest) + `{"v":1,"cmd":"status"}` + "\n",
		strings.Repeat("x", MaxControlRequest+10),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		server, client := net.Pipe()
		go func() {
			client.Write(data)
			client.Close()
		}()
		// Bounds a hang, which is a failure; a pipe answers at once.
		server.SetReadDeadline(time.Now().Add(time.Minute))
		req, cerr := readControlRequest(server)
		server.Close()
		switch {
		case (req == nil) == (cerr == nil):
			t.Fatalf("request %+v and error %+v: want exactly one", req, cerr)
		case cerr != nil:
			if cerr.Reason != ReasonBadRequest || !strings.HasPrefix(cerr.Message, "tableflip: control socket: ") {
				t.Fatalf("error %+v: want %s named as the package's", cerr, ReasonBadRequest)
			}
		case req.V != ControlVersion:
			t.Fatalf("request %+v of another version accepted", req)
		}
	})
}
