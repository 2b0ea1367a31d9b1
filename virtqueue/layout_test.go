package virtqueue

import (
	"testing"
	"unsafe"
)

// The split ring's structures as the virtio spec writes them, in Go: the
// named offsets must be where these put each field.
type (
	specDesc struct {
		addr  uint64
		len   uint32
		flags uint16
		next  uint16
	}
	specAvailHead struct{ flags, idx uint16 } // then le16 ring[size], le16 used_event
	specUsedElem  struct{ id, len uint32 }
	specUsedHead  struct{ flags, idx uint16 } // then virtq_used_elem ring[size], le16 avail_event
)

// TestRingLayout pins the ring offsets to the spec's structures and
// numbers, independently of the code that uses them.
func TestRingLayout(t *testing.T) {
	var d specDesc
	var a specAvailHead
	var e specUsedElem
	var u specUsedHead
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"descSize", descSize, unsafe.Sizeof(d)},
		{"descAddrOff", descAddrOff, unsafe.Offsetof(d.addr)},
		{"descLenOff", descLenOff, unsafe.Offsetof(d.len)},
		{"descFlagsOff", descFlagsOff, unsafe.Offsetof(d.flags)},
		{"descNextOff", descNextOff, unsafe.Offsetof(d.next)},
		{"availFlagsOff", availFlagsOff, unsafe.Offsetof(a.flags)},
		{"availIdxOff", availIdxOff, unsafe.Offsetof(a.idx)},
		{"availRingOff", availRingOff, unsafe.Sizeof(a)},
		{"availElemSize", availElemSize, 2},
		{"usedFlagsOff", usedFlagsOff, unsafe.Offsetof(u.flags)},
		{"usedIdxOff", usedIdxOff, unsafe.Offsetof(u.idx)},
		{"usedRingOff", usedRingOff, unsafe.Sizeof(u)},
		{"usedElemSize", usedElemSize, unsafe.Sizeof(e)},
		{"usedElemIDOff", usedElemIDOff, unsafe.Offsetof(e.id)},
		{"usedElemLenOff", usedElemLenOff, unsafe.Offsetof(e.len)},
		{"eventSize", eventSize, 2},
		// Alignments (virtio 1.x, "Virtqueue Alignment"), flags bits.
		{"descAlign", descAlign, 16},
		{"availAlign", availAlign, 2},
		{"usedAlign", usedAlign, 4},
		{"DescNext", DescNext, 1},
		{"DescWrite", DescWrite, 2},
		{"DescIndirect", DescIndirect, 4},
		{"availNoInterrupt", availNoInterrupt, 1},
		{"usedNoNotify", usedNoNotify, 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, the spec says %d", c.name, c.got, c.want)
		}
	}
	// The spec's sizes: 16*size, 6+2*size and 6+8*size bytes, with the
	// event fields right after each ring.
	for _, n := range []int{1, 2, 256, MaxSize} {
		if got, want := usedEventOff(n), 4+2*n; got != want {
			t.Errorf("used_event of a ring of %d at %d, want %d", n, got, want)
		}
		if got, want := availEventOff(n), 4+8*n; got != want {
			t.Errorf("avail_event of a ring of %d at %d, want %d", n, got, want)
		}
		if got, want := availBytes(n), 6+2*n; got != want {
			t.Errorf("available ring of %d: %d bytes, want %d", n, got, want)
		}
		if got, want := usedBytes(n), 6+8*n; got != want {
			t.Errorf("used ring of %d: %d bytes, want %d", n, got, want)
		}
	}
	// Linux's layout of a ring of 256: descriptors 4096, available ring
	// 518, used ring at the next page, 2054 bytes.
	if got, want := RingBytes(256), uint64(8192+2054); got != want {
		t.Errorf("RingBytes(256) = %d, want %d", got, want)
	}
}

// TestQueueAllocs: popping, returning and the notification checks
// allocate nothing, for direct and indirect chains.
func TestQueueAllocs(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		mt, d, q := newPair(t, 16, eventIdx)
		c := NewDescriptorChain(8)
		bufs := []Buffer{{testBuffer, 64}, {testBuffer + 64, 64}}
		turn := func() {
			if _, err := d.AddChain(bufs, 1); err != nil {
				t.Fatal(err)
			}
			if _, err := d.AddIndirectChain(testBuffer+0x1000, bufs, 1); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if ok, err := q.Pop(mt, c); !ok || err != nil {
					t.Fatal(ok, err)
				}
				q.PushUsed(c.Head, 0)
			}
			q.NeedsNotify()
			q.EnableNotification()
			for {
				if _, _, ok := d.Used(); !ok {
					break
				}
			}
		}
		turn() // every head used once: the driver allocates no more
		if n := testing.AllocsPerRun(100, turn); n != 0 {
			t.Errorf("EVENT_IDX %v: %v allocations a turn", eventIdx, n)
		}
	}
}
