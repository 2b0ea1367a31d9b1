package frontend_test

import (
	"encoding/binary"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
)

// TestRawFuse sends hand-made FUSE requests through Client.Raw. Every
// reply must be well formed (header length = used length, the request's
// unique, a status in range) and leave the daemon serving; where the
// daemons agree on the status, it is checked.
func TestRawFuse(t *testing.T) {
	const anyStatus = 1 // status not checked: the daemons differ
	cases := []struct {
		name   string
		in     []byte
		status int32
		// refPanics marks requests that make the reference panic.
		refPanics bool
	}{
		{"GETATTR", fuseRequest(fuseclient.OpGetattr, 1, 7, make([]byte, 16), 0), 0, false},
		{"unknown opcode", fuseRequest(9999, 1, 9, nil, 0), -int32(syscall.ENOSYS), false},
		{"opcode 0", fuseRequest(0, 1, 11, nil, 0), -int32(syscall.ENOSYS), false},
		{"header length past the request", fuseRequest(fuseclient.OpGetattr, 1, 13, make([]byte, 16), 4096), anyStatus, false},
		{"header length inside the header", fuseRequest(fuseclient.OpGetattr, 1, 15, make([]byte, 16), 20), anyStatus, false},
		{"GETATTR of an unknown node", fuseRequest(fuseclient.OpGetattr, 12345678, 17, make([]byte, 16), 0), -int32(syscall.EBADF), false},
		{"LOOKUP without NUL", fuseRequest(fuseclient.OpLookup, 1, 19, []byte("abc"), 0), anyStatus, true},
		{"LOOKUP of an empty name", fuseRequest(fuseclient.OpLookup, 1, 21, []byte{0}, 0), anyStatus, false},
		{"LOOKUP of a name with a slash", fuseRequest(fuseclient.OpLookup, 1, 23, []byte("a/b\x00"), 0), anyStatus, false},
		{"second INIT", fuseRequest(fuseclient.OpInit, 0, 25, make([]byte, 64), 0), -int32(syscall.EPROTO), false},
		{"total_extlen past the end", func() []byte {
			b := fuseRequest(fuseclient.OpGetattr, 1, 27, make([]byte, 16), 0)
			binary.LittleEndian.PutUint16(b[36:], 200)
			return b
		}(), anyStatus, false},
	}
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			fe, _ := start(t, dc.get(t), frontend.Options{})
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			for _, tc := range cases {
				if dc.name == "reference" && tc.refPanics {
					t.Logf("%s: not sent, the reference panics on it", tc.name)
					continue
				}
				out, err := c.Raw(1, tc.in, 4096)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if len(out) < 16 {
					t.Fatalf("%s: %d-byte reply", tc.name, len(out))
				}
				length, status := binary.LittleEndian.Uint32(out), int32(binary.LittleEndian.Uint32(out[4:]))
				unique := binary.LittleEndian.Uint64(out[8:])
				t.Logf("%-32s -> length %d status %d", tc.name, length, status)
				if int(length) != len(out) || unique != binary.LittleEndian.Uint64(tc.in[8:]) || status > 0 || status < -4095 {
					t.Errorf("%s: malformed reply: length %d of %d used, unique %d, status %d", tc.name, length, len(out), unique, status)
				}
				if tc.status != anyStatus && status != tc.status {
					t.Errorf("%s: status %d, want %d", tc.name, status, tc.status)
				}
				if _, err := c.GetAttr(fuseclient.RootID); err != nil {
					t.Fatalf("GETATTR after %s: %v", tc.name, err)
				}
			}
		})
	}
}
