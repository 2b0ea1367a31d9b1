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
type Driver struct {
	mem      []byte // guest RAM, mem[0] at guest address base
	base     uint64
	size     uint16
	eventIdx bool
	desc     uint64 // guest addresses of the ring parts
	avail    uint64
	used     uint64

	free      []uint16         // free descriptor indices
	chainLen  map[uint16][]int // head -> descriptor indices it holds
	nextAvail uint16
	lastUsed  uint16
}

// RingBytes returns how many bytes a ring of the given size needs at a
// 4 KiB-aligned address, with the parts laid out as Linux does.
func RingBytes(size uint16) uint64 {
	n := uint64(size)
	usedOff := (n*descSize + 6 + 2*n + 4095) &^ 4095
	return usedOff + 6 + 8*n
}

// NewDriver lays out a ring of the given size at guest address ring inside
// mem, which starts at guest address base.
func NewDriver(mem []byte, base, ring uint64, size uint16, eventIdx bool) *Driver {
	n := uint64(size)
	d := &Driver{mem: mem, base: base, size: size, eventIdx: eventIdx,
		desc: ring, avail: ring + n*descSize, used: ring + ((n*descSize + 6 + 2*n + 4095) &^ 4095),
		chainLen: map[uint16][]int{}}
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
	binary.LittleEndian.PutUint64(b[0:], x.Addr)
	binary.LittleEndian.PutUint32(b[8:], x.Len)
	binary.LittleEndian.PutUint16(b[12:], x.Flags)
	binary.LittleEndian.PutUint16(b[14:], x.Next)
}

// ErrRingFull means there are not enough free descriptors.
var ErrRingFull = errors.New("no free descriptors")

// Add publishes a chain of readable then writable buffers and returns its
// head.
func (d *Driver) Add(readable, writable []Buffer) (uint16, error) {
	n := len(readable) + len(writable)
	if n == 0 || n > len(d.free) {
		return 0, ErrRingFull
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = int(d.free[len(d.free)-1])
		d.free = d.free[:len(d.free)-1]
	}
	for i, b := range append(append([]Buffer(nil), readable...), writable...) {
		x := Desc{Addr: b.Addr, Len: b.Len}
		if i >= len(readable) {
			x.Flags |= DescWrite
		}
		if i+1 < n {
			x.Flags |= DescNext
			x.Next = uint16(idx[i+1])
		}
		d.putDesc(d.desc, idx[i], x)
	}
	head := uint16(idx[0])
	d.chainLen[head] = idx
	d.publish(head)
	return head, nil
}

// AddIndirect publishes a chain held in an indirect table written at guest
// address table, using one ring descriptor.
func (d *Driver) AddIndirect(table uint64, readable, writable []Buffer) (uint16, error) {
	all := append(append([]Buffer(nil), readable...), writable...)
	descs := make([]Desc, len(all))
	for i, b := range all {
		descs[i] = Desc{Addr: b.Addr, Len: b.Len}
		if i >= len(readable) {
			descs[i].Flags |= DescWrite
		}
		if i+1 < len(all) {
			descs[i].Flags |= DescNext
			descs[i].Next = uint16(i + 1)
		}
	}
	for i, x := range descs {
		d.putDesc(table, i, x)
	}
	return d.AddRaw([]Desc{{Addr: table, Len: uint32(len(descs) * descSize), Flags: DescIndirect}})
}

// AddRaw writes descs verbatim into free ring slots, in order, and publishes
// the first as a head. Next fields are used as given, so a test can build
// loops, out-of-range links and other malformed chains.
func (d *Driver) AddRaw(descs []Desc) (uint16, error) {
	if len(descs) == 0 || len(descs) > len(d.free) {
		return 0, ErrRingFull
	}
	idx := make([]int, len(descs))
	for i := range idx {
		idx[i] = int(d.free[len(d.free)-1])
		d.free = d.free[:len(d.free)-1]
	}
	for i, x := range descs {
		d.putDesc(d.desc, idx[i], x)
	}
	head := uint16(idx[0])
	d.chainLen[head] = idx
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
	slot := uint64(d.nextAvail % d.size)
	binary.LittleEndian.PutUint16(d.bytes(d.avail+4+2*slot, 2), head)
	d.nextAvail++
	d.SetAvailIdx(d.nextAvail)
}

// SetAvailIdx stores the available index as is (tests use it to run it
// away).
func (d *Driver) SetAvailIdx(idx uint16) {
	p := (*uint32)(unsafe.Pointer(&d.bytes(d.avail, 4)[0]))
	atomic.StoreUint32(p, uint32(idx)<<16|atomic.LoadUint32(p)&0xffff)
}

// SetUsedEvent asks the device to interrupt once it has used entry idx.
func (d *Driver) SetUsedEvent(idx uint16) {
	binary.LittleEndian.PutUint16(d.bytes(d.avail+4+2*uint64(d.size), 2), idx)
}

// AvailEvent returns the device's avail_event field.
func (d *Driver) AvailEvent() uint16 {
	return binary.LittleEndian.Uint16(d.bytes(d.used+4+8*uint64(d.size), 2))
}

// Used reaps one used entry: the chain head and the bytes written.
func (d *Driver) Used() (head uint16, length uint32, ok bool) {
	idx := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.bytes(d.used, 4)[0]))) >> 16)
	if idx == d.lastUsed {
		return 0, 0, false
	}
	slot := uint64(d.lastUsed % d.size)
	e := d.bytes(d.used+4+8*slot, 8)
	head, length = uint16(binary.LittleEndian.Uint32(e)), binary.LittleEndian.Uint32(e[4:])
	d.lastUsed++
	if idx, ok := d.chainLen[head]; ok {
		for _, i := range idx {
			d.free = append(d.free, uint16(i))
		}
		delete(d.chainLen, head)
	}
	return head, length, true
}

// Free returns the number of free descriptors.
func (d *Driver) Free() int { return len(d.free) }
