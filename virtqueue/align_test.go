package virtqueue

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestRingHostAlignment: ring addresses aligned in the front-end's address
// space, in a region whose front-end address is odd, are misaligned in the
// daemon's (mapping + MmapOffset + the offset in the region), where the
// rings' 32-bit atomics would fault on arm64. Translate refuses them, and
// accepts the same ring in an aligned region.
func TestRingHostAlignment(t *testing.T) {
	fd, err := unix.MemfdCreate("vq-align", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 1<<16); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user uint64
		ok   bool
	}{{0x10001, false}, {0x10002, false}, {0x10008, false}, {0x10000, true}} {
		r, err := MapRegion(Region{GuestAddr: 0, Size: 1 << 16, UserAddr: tc.user}, fd)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Unmap()
		mem, err := NewMemoryTable([]*MappedRegion{r})
		if err != nil {
			t.Fatal(err)
		}
		q, err := NewQueue(16, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		err = q.Translate(mem, Addresses{Desc: 0x10010, Avail: 0x11000, Used: 0x12000})
		if (err == nil) != tc.ok {
			t.Errorf("region at front-end address %#x: Translate: %v", tc.user, err)
		}
	}
}
