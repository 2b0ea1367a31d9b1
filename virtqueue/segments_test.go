package virtqueue

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// segmentsMemory maps, from one memfd, a 1 MiB region at guest address
// 0x100000 (front-end address 0x7f0000100000) and tiny adjacent regions of
// one byte each at guest addresses 0 to tiny-1.
func segmentsMemory(t *testing.T, tiny int) (*MemoryTable, []byte) {
	t.Helper()
	fd, err := unix.MemfdCreate("vq-segments", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 2<<20); err != nil {
		t.Fatal(err)
	}
	big, err := MapRegion(Region{GuestAddr: 0x100000, Size: 1 << 20, UserAddr: 0x7f0000100000, MmapOffset: 1 << 20}, fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(big.Unmap)
	regions := []*MappedRegion{big}
	for i := 0; i < tiny; i++ {
		r, err := MapRegion(Region{GuestAddr: uint64(i), Size: 1, UserAddr: 0x7e0000000000 + uint64(i)*4096, MmapOffset: uint64(i) * 4096}, fd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Unmap)
		regions = append(regions, r)
	}
	mt, err := NewMemoryTable(regions)
	if err != nil {
		t.Fatal(err)
	}
	return mt, big.Bytes()
}

// TestSegmentsPerChain: each part of a chain takes at most MaxSegments
// host segments. A chain of many descriptors, each over many one-byte
// regions, took one segment per region crossed (256 such regions and a
// chain of 32768 descriptors made 8.4 million, 482 MiB kept by the chain's
// scratch slices). A chain past the bound is refused as malformed, its
// scratch slices stay within the bound, and the ring serves on; a chain
// of MaxSegments readable and MaxSegments writable buffers is served.
func TestSegmentsPerChain(t *testing.T) {
	mt, mem := segmentsMemory(t, 16)
	const size = 4096
	d := NewDriver(mem, 0x100000, 0x100000, size, false)
	q, err := NewQueue(size, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Translate(mt, d.Addresses(0x7f0000000000)); err != nil {
		t.Fatal(err)
	}
	c := NewDescriptorChain(64)
	pop := func(bufs []Buffer, readable int) error {
		t.Helper()
		if _, err := d.AddChain(bufs, readable); err != nil {
			t.Fatal(err)
		}
		ok, err := q.Pop(mt, c)
		if !ok {
			t.Fatal("no chain popped")
		}
		q.PushUsed(c.Head, 0)
		if _, _, ok := d.Used(); !ok {
			t.Fatal("chain not returned")
		}
		if cap(c.Readable) > 2*MaxSegments || cap(c.Writable) > 2*MaxSegments {
			t.Fatalf("scratch of %d/%d segments kept", cap(c.Readable), cap(c.Writable))
		}
		return err
	}
	// 400 descriptors over the 16 tiny regions: 6400 segments.
	across := make([]Buffer, 400)
	for i := range across {
		across[i] = Buffer{0, 16}
	}
	if err := pop(across, len(across)); !errors.Is(err, ErrTooManySegments) {
		t.Fatalf("chain of %d segments across regions: %v", 16*len(across), err)
	}
	if err := pop(across, 0); !errors.Is(err, ErrTooManySegments) {
		t.Fatalf("writable chain of %d segments across regions: %v", 16*len(across), err)
	}
	const buffers = 0x100000 + 0x20000
	many := make([]Buffer, 2*MaxSegments)
	for i := range many {
		many[i] = Buffer{buffers + uint64(i), 1}
	}
	if err := pop(many, MaxSegments); err != nil {
		t.Fatalf("chain of %d readable and %d writable segments: %v", MaxSegments, MaxSegments, err)
	}
	if len(c.Readable) != MaxSegments || len(c.Writable) != MaxSegments {
		t.Fatalf("%d readable and %d writable segments", len(c.Readable), len(c.Writable))
	}
	if err := pop(many[:MaxSegments+1], MaxSegments+1); !errors.Is(err, ErrTooManySegments) {
		t.Fatalf("chain of %d readable segments: %v", MaxSegments+1, err)
	}
	if err := pop(many[:1], 1); err != nil || c.ReadableLen != 1 {
		t.Fatalf("a chain after the refused ones: %v", err)
	}
}
