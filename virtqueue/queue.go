package virtqueue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// The split virtqueue layout, as virtio 1.x defines it ("Split
// Virtqueues": section 2.7 of virtio 1.2, 2.6 of 1.1; the legacy layout of
// virtio 0.9.5 is the same). A ring is three parts in guest memory, every
// field little endian:
//
//	struct virtq_desc {            // descriptor table: size entries, 16-byte aligned
//		le64 addr;                 // descAddrOff: guest physical address of the buffer
//		le32 len;                  // descLenOff: its length
//		le16 flags;                // descFlagsOff: DescNext, DescWrite, DescIndirect
//		le16 next;                 // descNextOff: the next descriptor, with DescNext
//	};                             // descSize bytes
//
//	struct virtq_avail {           // available ring (driver to device), 2-byte aligned
//		le16 flags;                // availFlagsOff: availNoInterrupt
//		le16 idx;                  // availIdxOff: the driver's next entry, mod 2^16
//		le16 ring[size];           // availRingOff: chain heads, availElemSize each
//		le16 used_event;           // usedEventOff(size): with VIRTIO_F_EVENT_IDX
//	};
//
//	struct virtq_used {            // used ring (device to driver), 4-byte aligned
//		le16 flags;                // usedFlagsOff: usedNoNotify
//		le16 idx;                  // usedIdxOff: the device's next entry, mod 2^16
//		struct virtq_used_elem {   // usedRingOff: usedElemSize each
//			le32 id;               // usedElemIDOff: the chain's head
//			le32 len;              // usedElemLenOff: bytes the device wrote
//		} ring[size];
//		le16 avail_event;          // availEventOff(size): with VIRTIO_F_EVENT_IDX
//	};
//
// The event fields are there whether or not EVENT_IDX is negotiated, and a
// ring's parts are mapped with them (availBytes, usedBytes).

// Descriptor flags (virtq_desc.flags): VIRTQ_DESC_F_NEXT, _WRITE and
// _INDIRECT.
const (
	// DescNext: the chain goes on at the descriptor next names.
	DescNext = 1
	// DescWrite: the buffer is device-writable (else device-readable).
	DescWrite = 2
	// DescIndirect: the buffer is a table of descriptors (virtio 1.x
	// "Indirect Descriptors", VIRTIO_F_INDIRECT_DESC), its length a
	// multiple of descSize.
	DescIndirect = 4
)

// Descriptor table layout: struct virtq_desc.
const (
	descSize     = 16 // one descriptor
	descAlign    = 16 // the table's alignment
	descAddrOff  = 0  // le64 addr
	descLenOff   = 8  // le32 len
	descFlagsOff = 12 // le16 flags
	descNextOff  = 14 // le16 next
)

// Available ring layout: struct virtq_avail.
const (
	availAlign    = 2
	availFlagsOff = 0 // le16 flags
	availIdxOff   = 2 // le16 idx
	availRingOff  = 4 // le16 ring[size]
	availElemSize = 2 // one ring entry, a chain head
	// availNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT, the driver's flag
	// asking for no interrupts (heeded without EVENT_IDX only).
	availNoInterrupt = 1
)

// Used ring layout: struct virtq_used.
const (
	usedAlign      = 4
	usedFlagsOff   = 0 // le16 flags
	usedIdxOff     = 2 // le16 idx
	usedRingOff    = 4 // struct virtq_used_elem ring[size]
	usedElemSize   = 8 // one struct virtq_used_elem
	usedElemIDOff  = 0 // le32 id, in an element
	usedElemLenOff = 4 // le32 len, in an element
	// usedNoNotify is VIRTQ_USED_F_NO_NOTIFY, the device's flag asking
	// for no kicks (never set by this device).
	usedNoNotify = 1
)

// eventSize is the size of used_event and avail_event (le16).
const eventSize = 2

// availSlotOff is the offset of entry slot of the available ring.
func availSlotOff(slot int) int { return availRingOff + availElemSize*slot }

// usedElemOff is the offset of element slot of the used ring.
func usedElemOff(slot int) int { return usedRingOff + usedElemSize*slot }

// usedEventOff is the offset of used_event in the available ring of a
// queue of size entries: right after its ring.
func usedEventOff(size int) int { return availSlotOff(size) }

// availEventOff is the offset of avail_event in the used ring of a queue
// of size entries: right after its ring.
func availEventOff(size int) int { return usedElemOff(size) }

// availBytes and usedBytes are the sizes of the available and used rings
// of a queue of size entries, event fields included.
func availBytes(size int) int { return usedEventOff(size) + eventSize }
func usedBytes(size int) int  { return availEventOff(size) + eventSize }

// MaxSize is the largest queue size the virtio spec allows for split
// rings.
const MaxSize = 32768

// Errors that describe a malformed descriptor chain.
var (
	ErrChainTooLong = errors.New("descriptor chain longer than the queue")
	ErrBadIndex     = errors.New("descriptor index out of range")
	// ErrBadHead is a chain head outside the queue. Such an entry cannot
	// be returned to the driver: there is no chain to return.
	ErrBadHead          = errors.New("chain head out of range")
	ErrNestedIndirect   = errors.New("indirect descriptor inside an indirect table")
	ErrIndirectNext     = errors.New("indirect descriptor with NEXT set")
	ErrBadIndirectTable = errors.New("indirect table length is not a non-zero multiple of 16")
	ErrReadAfterWrite   = errors.New("device-readable descriptor after a device-writable one")
	// ErrTooManySegments is a chain whose readable or writable part
	// takes more than MaxSegments host segments.
	ErrTooManySegments = errors.New("descriptor chain with too many segments")
)

// MaxSegments bounds the host segments of each part (readable, writable)
// of one chain. A segment is a descriptor's buffer, or the piece of it in
// one memory region: without a bound, a chain of many descriptors each
// crossing many tiny regions takes millions of segments, which the
// chain's scratch slices keep. virtio-fs needs one segment per guest page
// of a request plus its headers: a 1 MiB WRITE or READ (FUSE's 256 pages)
// takes about 260, so 1024, like IOV_MAX, leaves headroom.
const MaxSegments = 1024

// Addresses are the front-end virtual addresses of a ring's three parts, as
// SET_VRING_ADDR carries them.
type Addresses struct {
	Desc, Avail, Used uint64
}

// Queue is the device side of one split virtqueue. It is not safe for
// concurrent use: one goroutine pops chains and, under the caller's lock,
// pushes used entries.
type Queue struct {
	size     uint16
	eventIdx bool

	desc  []byte
	avail []byte
	used  []byte

	nextAvail     uint16
	nextUsed      uint16
	signalledUsed uint16
	signalValid   bool
	fence         uint32
}

// NewQueue returns a queue of the given size (a power of two, at most
// MaxSize) whose next available index is base. EventIdx selects
// VIRTIO_F_EVENT_IDX notification suppression.
func NewQueue(size uint16, base uint16, eventIdx bool) (*Queue, error) {
	if size == 0 || size&(size-1) != 0 {
		return nil, fmt.Errorf("queue size %d is not a power of two", size)
	}
	return &Queue{size: size, eventIdx: eventIdx, nextAvail: base, nextUsed: base}, nil
}

// Size returns the number of descriptors in the queue.
func (q *Queue) Size() uint16 { return q.size }

// NextAvail returns the index of the next available entry to consume, the
// value GET_VRING_BASE reports.
func (q *Queue) NextAvail() uint16 { return q.nextAvail }

// Translate (re)binds the ring to guest memory. It is called when the ring
// starts and after every memory table change.
func (q *Queue) Translate(mem *MemoryTable, a Addresses) error {
	n := int(q.size)
	if a.Desc%descAlign != 0 || a.Avail%availAlign != 0 || a.Used%usedAlign != 0 {
		return fmt.Errorf("misaligned ring: desc %#x avail %#x used %#x", a.Desc, a.Avail, a.Used)
	}
	d, err := mem.UserSlice(a.Desc, uint64(n*descSize))
	if err != nil {
		return fmt.Errorf("descriptor table at %#x: %w", a.Desc, err)
	}
	av, err := mem.UserSlice(a.Avail, uint64(availBytes(n)))
	if err != nil {
		return fmt.Errorf("available ring at %#x: %w", a.Avail, err)
	}
	u, err := mem.UserSlice(a.Used, uint64(usedBytes(n)))
	if err != nil {
		return fmt.Errorf("used ring at %#x: %w", a.Used, err)
	}
	// The alignment that matters is the host's: a region whose front-end
	// address is not aligned as its mapping is (an odd UserAddr) puts an
	// aligned ring address at a misaligned host one, and the atomic
	// accesses to the rings fault on some CPUs (arm64).
	if hd, ha, hu := hostAddr(d), hostAddr(av), hostAddr(u); hd%descAlign != 0 || ha%availAlign != 0 || hu%usedAlign != 0 {
		return fmt.Errorf("ring misaligned in host memory: desc %#x avail %#x used %#x (front-end addresses %#x %#x %#x)", hd, ha, hu, a.Desc, a.Avail, a.Used)
	}
	q.desc, q.avail, q.used = d, av, u
	return nil
}

// hostAddr returns the address of b's first byte.
func hostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// load16 reads the little-endian u16 at b[off] with an atomic load of the
// aligned 32-bit word that holds it, so that the compiler neither caches nor
// tears a value the driver writes concurrently. off must be at least 2.
func load16(b []byte, off int) uint16 {
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 == 0 {
		return uint16(atomic.LoadUint32((*uint32)(p)))
	}
	return uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off-2]))) >> 16)
}

// availIdx returns the driver's available index.
func (q *Queue) availIdx() uint16 { return load16(q.avail, availIdxOff) }

// full is a full memory barrier (a locked instruction on amd64).
func (q *Queue) full() { atomic.AddUint32(&q.fence, 1) }

// Pending reports whether the driver has made chains available that were
// not popped yet.
func (q *Queue) Pending() bool { return q.availIdx() != q.nextAvail }

// Pop takes the next available chain into c. It returns false when the ring
// is empty. A malformed chain is still consumed (c.Head is valid) and
// reported as an error; the caller returns it with PushUsed(c.Head, 0).
func (q *Queue) Pop(mem *MemoryTable, c *DescriptorChain) (bool, error) {
	avail := q.availIdx()
	if avail == q.nextAvail {
		return false, nil
	}
	if uint16(avail-q.nextAvail) > q.size {
		// The driver claims more entries than the ring holds.
		return false, fmt.Errorf("available index %d runs %d entries ahead of %d on a ring of %d", avail, uint16(avail-q.nextAvail), q.nextAvail, q.size)
	}
	slot := int(q.nextAvail % q.size)
	head := binary.LittleEndian.Uint16(q.avail[availSlotOff(slot):])
	q.nextAvail++
	c.reset(head)
	if head >= q.size {
		return true, ErrBadHead
	}
	return true, q.walk(mem, c)
}

func (q *Queue) walk(mem *MemoryTable, c *DescriptorChain) error {
	table, tableLen := q.desc, uint64(q.size)
	idx := uint64(c.Head)
	indirect, writable := false, false
	var err error
	// Each table bounds its own walk: the ring by the queue size, an
	// indirect table (itself at most the queue size) by its length.
	for count := uint64(0); ; count++ {
		if count >= tableLen {
			return ErrChainTooLong
		}
		if idx >= tableLen {
			return ErrBadIndex
		}
		d := table[idx*descSize : idx*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[descAddrOff:])
		length := uint64(binary.LittleEndian.Uint32(d[descLenOff:]))
		flags := binary.LittleEndian.Uint16(d[descFlagsOff:])
		next := binary.LittleEndian.Uint16(d[descNextOff:])
		if flags&DescIndirect != 0 {
			if indirect {
				return ErrNestedIndirect
			}
			if flags&DescNext != 0 {
				return ErrIndirectNext
			}
			if length == 0 || length%descSize != 0 || length/descSize > uint64(q.size) {
				return ErrBadIndirectTable
			}
			if table, err = mem.Slice(addr, length); err != nil {
				// A table that crosses from one region into an
				// adjacent one is gathered into the chain's scratch.
				if table, err = c.gatherTable(mem, addr, length); err != nil {
					return fmt.Errorf("indirect table at %#x: %w", addr, err)
				}
			}
			tableLen, idx, indirect = length/descSize, 0, true
			count = ^uint64(0) // the increment starts the new table at 0
			continue
		}
		if flags&DescWrite != 0 {
			writable = true
			c.Writable, err = mem.appendSegments(c.Writable, addr, length, MaxSegments)
			c.WritableLen += length
		} else {
			if writable {
				return ErrReadAfterWrite
			}
			c.Readable, err = mem.appendSegments(c.Readable, addr, length, MaxSegments)
			c.ReadableLen += length
		}
		if err != nil {
			return fmt.Errorf("descriptor at %#x, %d bytes: %w", addr, length, err)
		}
		if flags&DescNext == 0 {
			return nil
		}
		idx = uint64(next)
	}
}

// PushUsed returns the chain with the given head to the driver, recording
// that the device wrote length bytes into it.
func (q *Queue) PushUsed(head uint16, length uint32) {
	e := q.used[usedElemOff(int(q.nextUsed%q.size)):]
	binary.LittleEndian.PutUint32(e[usedElemIDOff:], uint32(head))
	binary.LittleEndian.PutUint32(e[usedElemLenOff:], length)
	q.nextUsed++
	// One 32-bit store of flags and idx, the aligned word at the ring's
	// start: it publishes the element (release) and, being a locked
	// instruction, also orders it before the read of used_event in
	// NeedsNotify. Flags stay zero: the device never asks to skip kicks
	// through the flags word (usedNoNotify).
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&q.used[usedFlagsOff])), uint32(q.nextUsed)<<(8*usedIdxOff))
}

// NeedsNotify reports whether the driver wants an interrupt for the used
// entries pushed since the last call that returned true.
func (q *Queue) NeedsNotify() bool {
	if !q.eventIdx {
		return binary.LittleEndian.Uint16(q.avail[availFlagsOff:])&availNoInterrupt == 0
	}
	newIdx, old := q.nextUsed, q.signalledUsed
	valid := q.signalValid
	q.signalledUsed, q.signalValid = newIdx, true
	if !valid {
		return true
	}
	if newIdx == old {
		return false
	}
	usedEvent := load16(q.avail, usedEventOff(int(q.size)))
	return uint16(newIdx-usedEvent-1) < uint16(newIdx-old)
}

// EnableNotification asks the driver to kick for the next available entry
// and reports whether entries arrived meanwhile (the caller should then keep
// popping rather than sleep).
func (q *Queue) EnableNotification() bool {
	if q.eventIdx {
		binary.LittleEndian.PutUint16(q.used[availEventOff(int(q.size)):], q.nextAvail)
		q.full()
	}
	return q.Pending()
}

// DescriptorChain is one request as the driver laid it out: device-readable
// buffers followed by device-writable buffers, each a slice of guest memory.
// Its slices are reused across Pop calls.
type DescriptorChain struct {
	Head        uint16
	Readable    [][]byte
	Writable    [][]byte
	ReadableLen uint64
	WritableLen uint64

	table     []byte   // scratch for indirect tables that cross regions
	tableSegs [][]byte // scratch for gathering them
}

func (c *DescriptorChain) gatherTable(mem *MemoryTable, addr, length uint64) ([]byte, error) {
	segs, err := mem.AppendSegments(c.tableSegs[:0], addr, length)
	c.tableSegs = segs[:0]
	if err != nil {
		return nil, err
	}
	if uint64(cap(c.table)) < length {
		c.table = make([]byte, length)
	}
	t := c.table[:length]
	n := 0
	for _, s := range segs {
		n += copy(t[n:], s)
	}
	clear(segs)
	return t, nil
}

// NewDescriptorChain returns a chain with room for segs segments of each
// kind, so that walking typical chains does not allocate.
func NewDescriptorChain(segs int) *DescriptorChain {
	return &DescriptorChain{Readable: make([][]byte, 0, segs), Writable: make([][]byte, 0, segs)}
}

func (c *DescriptorChain) reset(head uint16) {
	clear(c.Readable)
	clear(c.Writable)
	c.Head, c.Readable, c.Writable = head, c.Readable[:0], c.Writable[:0]
	c.ReadableLen, c.WritableLen = 0, 0
}
