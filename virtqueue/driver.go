package virtqueue

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"unsafe"
)

// Buffer is one guest buffer handed to the device.
type Buffer struct {
	Addr uint64 // guest physical address
	Len  uint32
}

// Desc is a raw descriptor, for building chains by hand (hostile tests).
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Driver is the driver side of a split ring over memory that the test owns.
// It is what a guest kernel does, reduced to what tests and the front-end
// harness need: lay out chains, publish them, and reap used entries.
//
// A Driver is not safe for concurrent use; callers serialise access.
type Driver struct {
	mem      []byte // guest RAM, mem[0] at guest address base
	base     uint64
	size     uint16
	eventIdx bool
	desc     uint64 // guest addresses of the ring parts
	avail    uint64
	used     uint64

	free      []uint16 // free descriptor indices
	chains    [][]int  // head -> descriptor indices it holds; empty when not in flight
	nextAvail uint16
	lastUsed  uint16
}

// legacyRingAlign is where Linux's vring_init puts the used ring: at the
// first multiple of it after the available ring (the legacy layout's
// VIRTIO_PCI_VRING_ALIGN, 4096; virtio 1.x only asks usedAlign).
const legacyRingAlign = 4096

// ringUsedOff is the offset of the used ring from the descriptor table in
// a ring of n entries laid out as Linux does.
func ringUsedOff(n int) uint64 {
	return uint64(n*descSize+availBytes(n)+legacyRingAlign-1) &^ (legacyRingAlign - 1)
}

// RingBytes returns how many bytes a ring of the given size needs at a
// 4 KiB-aligned address, with the parts laid out as Linux does.
func RingBytes(size uint16) uint64 {
	return ringUsedOff(int(size)) + uint64(usedBytes(int(size)))
}

// NewDriver lays out a ring of the given size at guest address ring inside
// mem, which starts at guest address base.
func NewDriver(mem []byte, base, ring uint64, size uint16, eventIdx bool) *Driver {
	n := uint64(size)
	d := &Driver{mem: mem, base: base, size: size, eventIdx: eventIdx,
		desc: ring, avail: ring + n*descSize, used: ring + ringUsedOff(int(size)),
		chains: make([][]int, size)}
	clear(d.bytes(ring, RingBytes(size)))
	for i := int(size) - 1; i >= 0; i-- {
		d.free = append(d.free, uint16(i))
	}
	return d
}

// Addresses returns the ring's addresses translated by userOffset, the
// difference between front-end virtual and guest physical addresses.
func (d *Driver) Addresses(userOffset uint64) Addresses {
	return Addresses{Desc: d.desc + userOffset, Avail: d.avail + userOffset, Used: d.used + userOffset}
}

func (d *Driver) bytes(addr, n uint64) []byte { return d.mem[addr-d.base : addr-d.base+n] }

// Memory returns n bytes of guest memory at guest address addr.
func (d *Driver) Memory(addr, n uint64) []byte { return d.bytes(addr, n) }

func (d *Driver) putDesc(table uint64, i int, x Desc) {
	b := d.bytes(table+uint64(i)*descSize, descSize)
	binary.LittleEndian.PutUint64(b[descAddrOff:], x.Addr)
	binary.LittleEndian.PutUint32(b[descLenOff:], x.Len)
	binary.LittleEndian.PutUint16(b[descFlagsOff:], x.Flags)
	binary.LittleEndian.PutUint16(b[descNextOff:], x.Next)
}

// ErrRingFull means there are not enough free descriptors.
var ErrRingFull = errors.New("no free descriptors")

// take removes n descriptors from the free list and records them as the
// chain of the first one, which it returns.
func (d *Driver) take(n int) (head uint16, idx []int) {
	head = d.free[len(d.free)-1]
	idx = d.chains[head][:0]
	for range n {
		idx = append(idx, int(d.free[len(d.free)-1]))
		d.free = d.free[:len(d.free)-1]
	}
	d.chains[head] = idx
	return head, idx
}

// Add publishes a chain of readable then writable buffers and returns its
// head.
func (d *Driver) Add(readable, writable []Buffer) (uint16, error) {
	return d.AddChain(append(append([]Buffer(nil), readable...), writable...), len(readable))
}

// AddChain publishes bufs as one chain, the first readable of them
// device-readable and the rest device-writable, and returns its head. It
// allocates nothing once every head has been used once.
func (d *Driver) AddChain(bufs []Buffer, readable int) (uint16, error) {
	n := len(bufs)
	if n == 0 || n > len(d.free) {
		return 0, ErrRingFull
	}
	head, idx := d.take(n)
	for i, b := range bufs {
		x := Desc{Addr: b.Addr, Len: b.Len}
		if i >= readable {
			x.Flags |= DescWrite
		}
		if i+1 < n {
			x.Flags |= DescNext
			x.Next = uint16(idx[i+1])
		}
		d.putDesc(d.desc, idx[i], x)
	}
	d.publish(head)
	return head, nil
}

// AddIndirect publishes a chain held in an indirect table written at guest
// address table, using one ring descriptor.
func (d *Driver) AddIndirect(table uint64, readable, writable []Buffer) (uint16, error) {
	return d.AddIndirectChain(table, append(append([]Buffer(nil), readable...), writable...), len(readable))
}

// AddIndirectChain is AddChain through an indirect table written at guest
// address table (room for len(bufs) descriptors), using one ring
// descriptor. It allocates nothing once every head has been used once.
func (d *Driver) AddIndirectChain(table uint64, bufs []Buffer, readable int) (uint16, error) {
	if len(bufs) == 0 || len(d.free) == 0 {
		return 0, ErrRingFull
	}
	for i, b := range bufs {
		x := Desc{Addr: b.Addr, Len: b.Len}
		if i >= readable {
			x.Flags |= DescWrite
		}
		if i+1 < len(bufs) {
			x.Flags |= DescNext
			x.Next = uint16(i + 1)
		}
		d.putDesc(table, i, x)
	}
	head, idx := d.take(1)
	d.putDesc(d.desc, idx[0], Desc{Addr: table, Len: uint32(len(bufs) * descSize), Flags: DescIndirect})
	d.publish(head)
	return head, nil
}

// AddRaw writes descs verbatim into free ring slots, in order, and publishes
// the first as a head. Next fields are used as given, so a test can build
// loops, out-of-range links and other malformed chains.
func (d *Driver) AddRaw(descs []Desc) (uint16, error) {
	if len(descs) == 0 || len(descs) > len(d.free) {
		return 0, ErrRingFull
	}
	head, idx := d.take(len(descs))
	for i, x := range descs {
		d.putDesc(d.desc, idx[i], x)
	}
	d.publish(head)
	return head, nil
}

// SlotIndices returns the descriptor indices AddRaw would use next, so a
// test can compute Next links before adding.
func (d *Driver) SlotIndices(n int) []uint16 {
	out := make([]uint16, 0, n)
	for i := 0; i < n && i < len(d.free); i++ {
		out = append(out, d.free[len(d.free)-1-i])
	}
	return out
}

// PublishHead puts head in the available ring as is, without touching any
// descriptor (for out-of-range heads).
func (d *Driver) PublishHead(head uint16) { d.publish(head) }

func (d *Driver) publish(head uint16) {
	slot := int(d.nextAvail % d.size)
	binary.LittleEndian.PutUint16(d.bytes(d.avail+uint64(availSlotOff(slot)), availElemSize), head)
	d.nextAvail++
	d.SetAvailIdx(d.nextAvail)
}

// SetAvailIdx stores the available index as is (tests use it to run it
// away).
func (d *Driver) SetAvailIdx(idx uint16) {
	// flags and idx are the aligned word at the ring's start: keep the
	// flags, replace idx.
	p := (*uint32)(unsafe.Pointer(&d.bytes(d.avail+availFlagsOff, 4)[0]))
	atomic.StoreUint32(p, uint32(idx)<<(8*availIdxOff)|atomic.LoadUint32(p)&0xffff)
}

// AvailIdx returns the available index the driver has published: the
// number of chains made available so far, modulo 2^16.
func (d *Driver) AvailIdx() uint16 { return d.nextAvail }

// SetUsedEvent asks the device to interrupt once it has used entry idx.
// The store is a full fence, so a used index read after it sees every
// entry the device published before it read used_event.
func (d *Driver) SetUsedEvent(idx uint16) {
	// used_event sits right after the available ring's entries, a 4-byte
	// aligned offset for any even size; update it with a 32-bit CAS so the
	// store fences.
	off := d.avail + uint64(usedEventOff(int(d.size)))
	if off%4 != 0 {
		binary.LittleEndian.PutUint16(d.bytes(off, eventSize), idx)
		return
	}
	p := (*uint32)(unsafe.Pointer(&d.bytes(off, 4)[0]))
	for {
		old := atomic.LoadUint32(p)
		if atomic.CompareAndSwapUint32(p, old, old&0xffff0000|uint32(idx)) {
			return
		}
	}
}

// AvailEvent returns the device's avail_event field.
func (d *Driver) AvailEvent() uint16 {
	return binary.LittleEndian.Uint16(d.bytes(d.used+uint64(availEventOff(int(d.size))), eventSize))
}

// usedWord loads the used ring's flags and idx, the aligned word at its
// start.
func (d *Driver) usedWord() uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.bytes(d.used+usedFlagsOff, 4)[0])))
}

// UsedIdx returns the device's used index.
func (d *Driver) UsedIdx() uint16 { return uint16(d.usedWord() >> (8 * usedIdxOff)) }

// UsedFlags returns the device's used ring flags (bit 0,
// VIRTQ_USED_F_NO_NOTIFY: no kicks wanted).
func (d *Driver) UsedFlags() uint16 { return uint16(d.usedWord()) }

// LastUsed returns the index of the next used entry Used will reap.
func (d *Driver) LastUsed() uint16 { return d.lastUsed }

// NeedsKick reports whether the device wants a notification for the chains
// published since the available index was old, as Linux's
// virtqueue_kick_prepare decides: with EVENT_IDX from avail_event, else from
// the used ring's NO_NOTIFY flag. Call it after publishing (the publish
// store fences).
func (d *Driver) NeedsKick(old uint16) bool {
	if d.eventIdx {
		return NeedEvent(d.AvailEvent(), d.nextAvail, old)
	}
	return d.UsedFlags()&usedNoNotify == 0
}

// NeedEvent is the virtio vring_need_event test: whether moving an index
// from old to new crosses event.
func NeedEvent(event, new, old uint16) bool { return new-event-1 < new-old }

// EnableInterrupts asks the device to interrupt for the next used entry
// (with EVENT_IDX by setting used_event to LastUsed) and reports whether
// used entries are already pending, in which case the caller should reap
// them rather than wait for an interrupt that may never come.
func (d *Driver) EnableInterrupts() (pending bool) {
	if d.eventIdx {
		d.SetUsedEvent(d.lastUsed)
	}
	return d.UsedIdx() != d.lastUsed
}

// Used reaps one used entry: the chain head and the bytes written.
func (d *Driver) Used() (head uint16, length uint32, ok bool) {
	idx := d.UsedIdx()
	if idx == d.lastUsed {
		return 0, 0, false
	}
	slot := int(d.lastUsed % d.size)
	e := d.bytes(d.used+uint64(usedElemOff(slot)), usedElemSize)
	head, length = uint16(binary.LittleEndian.Uint32(e[usedElemIDOff:])), binary.LittleEndian.Uint32(e[usedElemLenOff:])
	d.lastUsed++
	if int(head) < len(d.chains) && len(d.chains[head]) > 0 {
		for _, i := range d.chains[head] {
			d.free = append(d.free, uint16(i))
		}
		d.chains[head] = d.chains[head][:0]
	}
	return head, length, true
}

// InFlight reports whether head is the head of a chain the device has not
// returned yet.
func (d *Driver) InFlight(head uint16) bool {
	return int(head) < len(d.chains) && len(d.chains[head]) > 0
}

// Free returns the number of free descriptors.
func (d *Driver) Free() int { return len(d.free) }

// Size returns the queue size.
func (d *Driver) Size() uint16 { return d.size }
