package fuse

import (
	"errors"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// TestInitCheck refuses an INIT with EPROTO when Config.InitCheck says no,
// with the guest's offered flags, and starts no session; an INIT it lets
// through is served as without it.
func TestInitCheck(t *testing.T) {
	var seen uint64
	refuse := true
	c := newClientCfg(t, layouts[0], Config{Capabilities: testCaps, InitCheck: func(offered uint64) error {
		seen = offered
		if refuse {
			return errors.New("no")
		}
		return nil
	}})
	if r := c.call(opInit, 0, args(initIn())); r.errno() != syscall.EPROTO {
		t.Fatalf("INIT refused by InitCheck: errno %v, want EPROTO", r.errno())
	}
	if seen != guestFlags {
		t.Errorf("InitCheck saw %#x, the guest offered %#x", seen, uint64(guestFlags))
	}
	if r := c.call(opGetattr, 1, args(&gofuse.GetAttrIn{})); r.errno() != syscall.EIO {
		t.Errorf("GETATTR after a refused INIT: errno %v, want EIO (no session)", r.errno())
	}
	refuse = false
	if out := c.init(); uint64(out.Flags)|uint64(out.Flags2)<<32 != guestFlags&testCaps {
		t.Errorf("INIT let through: flags %#x/%#x, want %#x", out.Flags, out.Flags2, guestFlags&testCaps)
	}
}
