package vhostuser

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// faultRing lays out, at offset ring of m, a ring of 16 entries with one
// chain available (a readable and a writable 64-byte buffer at offset
// buf), and returns its SET_VRING_ADDR payload for queue q in a region
// mapped at front-end address fzUserBase.
func faultRing(m []byte, q uint32, ring, buf uint64) []byte {
	r := m[ring:]
	putDesc(r, 0, buf, 64, virtqueue.DescNext, 1)
	putDesc(r, 1, buf+64, 64, virtqueue.DescWrite, 0)
	binary.LittleEndian.PutUint16(r[0x1000+2:], 1)
	base := uint64(fzUserBase) + ring
	return addrPayload(q, virtqueue.Addresses{Desc: base, Avail: base + 0x1000, Used: base + 0x2000})
}

// waitUsedIdx waits for the used index of the ring at offset ring of m to
// reach n.
func waitUsedIdx(t *testing.T, m []byte, ring uint64, n uint16) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); binary.LittleEndian.Uint16(m[ring+0x2002:]) != n; {
		if time.Now().After(deadline) {
			t.Fatalf("used index of the ring at %#x is %d, want %d", ring, binary.LittleEndian.Uint16(m[ring+0x2002:]), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// recoveringDevice answers every chain as the FUSE server does: a panic
// while serving is recovered and answered with an error reply written
// into the chain's writable part, which faults again when that is what
// faulted.
type recoveringDevice struct{ fakeDevice }

func (d *recoveringDevice) NewHandler() Handler { return recoveringHandler{} }

type recoveringHandler struct{}

func (recoveringHandler) Handle(qi int, c *virtqueue.DescriptorChain) (n uint32) {
	defer func() {
		if p := recover(); p != nil {
			n = uint32(copy(c.Writable[0], "error reply"))
		}
	}()
	return uint32(copy(c.Writable[0], "reply"))
}

// TestGuestMemoryTruncated: the front-end shrinks the file behind guest
// memory after SET_MEM_TABLE, then kicks a ring whose rings, or whose
// chain's buffers, are past the new end. The access raised SIGBUS, which
// killed the daemon ("fatal error: fault"). Now that ring is marked
// broken, its used ring is not written again, and the control goroutine
// and the other ring serve on; with a pool too, and with a handler that
// recovers the fault and faults again writing its error reply (as the
// FUSE server's recovery does).
func TestGuestMemoryTruncated(t *testing.T) {
	const (
		size    = 1 << 20
		newSize = 0x40000 // ring 0 and its buffers stay below it
		ring0   = 0x0
		buf0    = 0x10000
	)
	for _, tc := range []struct {
		name       string
		ring, buf  uint64 // ring 1's
		usedInside bool   // whether ring 1's used ring is left mapped
	}{
		{"rings", 0x80000, 0x90000, false},
		{"buffers", 0x4000, 0x90000, true},
	} {
		for _, c := range []struct {
			name string
			pool int
			dev  Device
		}{
			{"", 0, &fakeDevice{queues: 2}},
			{" pool", 2, &fakeDevice{queues: 2}},
			{" recovering", 0, &recoveringDevice{fakeDevice{queues: 2}}},
			{" recovering pool", 2, &recoveringDevice{fakeDevice{queues: 2}}},
		} {
			t.Run(tc.name+c.name, func(t *testing.T) {
				fd, m := testGuest(t, "truncated-guest", size)
				addr0 := faultRing(m, 0, ring0, buf0)
				addr1 := faultRing(m, 1, tc.ring, tc.buf)
				s := newDeviceSession(t, c.dev, Options{Log: quietLog(), ThreadPoolSize: c.pool})
				s.request(SetMemTable, append(u32le(1, 0), region(0, size, fzUserBase, 0)...), true, fd)
				if err := unix.Ftruncate(fd, newSize); err != nil {
					t.Fatal(err)
				}
				kick1, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(kick1)
				s.startRing(1, addr1, kick1, -1)
				unix.Write(kick1, eventOne[:])
				time.Sleep(100 * time.Millisecond)
				if tc.usedInside {
					if n := binary.LittleEndian.Uint16(m[tc.ring+0x2002:]); n != 0 {
						t.Errorf("the faulting chain was completed (used index %d)", n)
					}
				}
				// The other ring, and the control goroutine, serve on.
				kick0, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(kick0)
				s.startRing(0, addr0, kick0, -1)
				unix.Write(kick0, eventOne[:])
				waitUsedIdx(t, m, ring0, 1)
				if st, ok := s.requestWithin(SetVringCall, u64le(1|VringNoFd), 3*time.Second); !ok || st != 0 {
					t.Fatalf("SET_VRING_CALL after the fault: answered %v, status %d", ok, st)
				}
				if err := s.front.Write(GetVringBase, FlagVersion, u32le(1, 0)); err != nil {
					t.Fatal(err)
				}
				if _, err := s.front.Read(); err != nil {
					t.Fatalf("GET_VRING_BASE after the fault: %v", err)
				}
			})
		}
	}
}
