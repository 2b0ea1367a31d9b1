package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Message payloads.
//
// Every body the daemon reads or writes on the control socket or the
// back-end channel has a Go type here, after the model of rust-vmm's vhost
// crate: a struct with the wire fields (little endian, padding implied),
// its wire size (WireSize, and a constant), Put to write it into a buffer and
// decode to read it back. Decode and DecodeExact are the one place a
// fixed-size payload's length is checked. The back-end and the test
// front-end both encode and decode through these types, so the wire format
// is written down once.
//
// The back-end reads payloads as it always has: a short one is an error, a
// longer one is read for its first WireSize bytes, the rest ignored (QEMU
// sends exactly that many). DecodeExact is for a peer that wants the size to
// be right both ways.

// Payload is the constraint satisfied by the fixed-size payload types of
// this package (U64, VringState, VringAddr, VringFd, MemoryRegion,
// SingleMemoryRegion, LogArea, DeviceStateTransfer, ConfigSpace,
// ShmemConfig, ShmemMap, FSMsg). The methods have value receivers, so that
// decoding a payload through it does not allocate.
type Payload[T any] interface {
	Encoder
	// decode reads a payload from b, which holds at least WireSize bytes.
	decode(b []byte) T
}

// Encoder is what Encode needs of a payload: its size and how to write it.
// Every payload type has both, MemoryTable (which has no fixed size)
// included.
type Encoder interface {
	// WireSize is the payload's size in bytes on the wire.
	WireSize() int
	// Put writes the payload into b, which holds at least WireSize bytes.
	Put(b []byte)
}

// Encode returns p's wire form in a new slice.
func Encode(p Encoder) []byte {
	b := make([]byte, p.WireSize())
	p.Put(b)
	return b
}

// SizeError is the error of a payload whose size does not fit its type.
type SizeError struct {
	// Len is the payload's size in bytes.
	Len int
	// Want is the type's wire size.
	Want int
}

// Error says the size found and the size wanted.
func (e *SizeError) Error() string {
	return fmt.Sprintf("payload is %d bytes, want %d", e.Len, e.Want)
}

// Decode reads a T from b, which must hold at least T's wire size; bytes
// past it are ignored (the back-end's rule for every request). A short b
// is a *SizeError.
func Decode[T Payload[T]](b []byte) (T, error) { return decodeSized[T](b, false) }

// DecodeExact is Decode for a b that must hold exactly T's wire size.
func DecodeExact[T Payload[T]](b []byte) (T, error) { return decodeSized[T](b, true) }

// decodeSized is the one place a payload's size is checked.
func decodeSized[T Payload[T]](b []byte, exact bool) (T, error) {
	var v T
	n := v.WireSize()
	if len(b) < n || exact && len(b) != n {
		return v, &SizeError{Len: len(b), Want: n}
	}
	return v.decode(b[:n]), nil
}

// decodeMsg decodes m's payload as a T, with the request named in the
// error, as in "SET_VRING_ADDR payload is 4 bytes, want 40".
func decodeMsg[T Payload[T]](m *Message) (T, error) {
	v, err := Decode[T](m.Payload)
	if err != nil {
		return v, fmt.Errorf("%v %w", m.Request, err)
	}
	return v, nil
}

// decodeWithFd decodes m's payload as a T, then takes its only
// descriptor, which the caller then owns.
func decodeWithFd[T Payload[T]](m *Message) (T, int, error) {
	v, err := decodeMsg[T](m)
	if err != nil {
		return v, -1, err
	}
	fd, err := m.TakeFd()
	return v, fd, err
}

// ringPayload is a payload that names a ring.
type ringPayload[T any] interface {
	Payload[T]
	ring() uint32
}

// decodeRing decodes a ring request's payload and finds the ring it names.
func decodeRing[T ringPayload[T]](b *Backend, m *Message) (T, *vring, error) {
	p, err := decodeMsg[T](m)
	if err != nil {
		return p, nil, err
	}
	v, err := b.ring(p.ring())
	return p, v, err
}

var le = binary.LittleEndian

// Payload sizes.
const (
	// U64Size is the size of U64.
	U64Size = 8
	// VringStateSize is the size of VringState.
	VringStateSize = 8
	// VringAddrSize is the size of VringAddr.
	VringAddrSize = 40
	// VringFdSize is the size of VringFd.
	VringFdSize = 8
	// MemRegionSize is the wire size of one memory region description
	// (MemoryRegion).
	MemRegionSize = 32
	// MemoryTableHeaderSize is the size of SET_MEM_TABLE's header, before
	// its regions.
	MemoryTableHeaderSize = 8
	// SingleMemoryRegionSize is the size of SingleMemoryRegion.
	SingleMemoryRegionSize = 8 + MemRegionSize
	// LogAreaSize is the size of LogArea.
	LogAreaSize = 16
	// DeviceStateTransferSize is the size of DeviceStateTransfer.
	DeviceStateTransferSize = 8
	// ConfigSpaceSize is the size of ConfigSpace, the header before the
	// configuration bytes.
	ConfigSpaceSize = 12
	// MaxShmemRegions is how many shared memory regions ShmemConfig
	// describes at most.
	MaxShmemRegions = 256
	// ShmemConfigSize is the size of ShmemConfig.
	ShmemConfigSize = 8 + 8*MaxShmemRegions
	// ShmemMapSize is the size of ShmemMap.
	ShmemMapSize = 40
	// FSMsgSlots is how many ranges an FSMsg holds.
	FSMsgSlots = 8
	// FSMsgSize is the size of FSMsg.
	FSMsgSize = 4 * 8 * FSMsgSlots
)

// U64 is the body of the requests and replies that carry one number:
// GET_FEATURES, SET_FEATURES, the protocol features, GET_QUEUE_NUM,
// GET_MAX_MEM_SLOTS, the REPLY_ACK status and the replies of
// SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE.
type U64 struct {
	// Value is the number.
	Value uint64
}

// WireSize is U64Size.
func (U64) WireSize() int { return U64Size }

// Put writes v into b.
func (v U64) Put(b []byte) { le.PutUint64(b, v.Value) }

func (U64) decode(b []byte) U64 { return U64{le.Uint64(b)} }

// VringState is the body of SET_VRING_NUM, SET_VRING_BASE,
// SET_VRING_ENABLE and GET_VRING_BASE, and of GET_VRING_BASE's reply.
type VringState struct {
	// Index is the ring's index.
	Index uint32
	// Num is the ring's size (SET_VRING_NUM), its next available index
	// (SET_VRING_BASE, GET_VRING_BASE's reply) or whether it is enabled
	// (SET_VRING_ENABLE, non-zero); GET_VRING_BASE ignores it.
	Num uint32
}

// WireSize is VringStateSize.
func (VringState) WireSize() int { return VringStateSize }

// Put writes s into b.
func (s VringState) Put(b []byte) {
	le.PutUint32(b[0:], s.Index)
	le.PutUint32(b[4:], s.Num)
}

func (VringState) decode(b []byte) VringState {
	return VringState{Index: le.Uint32(b[0:]), Num: le.Uint32(b[4:])}
}

func (s VringState) ring() uint32 { return s.Index }

// VringFlagLog is VringAddr.Flags' VHOST_VRING_F_LOG: log the used ring's
// writes at VringAddr.Log.
const VringFlagLog = 1

// VringAddr is the body of SET_VRING_ADDR: where a ring's parts are, as
// addresses in the front-end's address space (translated through the
// memory table's user addresses), and where its used ring is for dirty
// logging.
type VringAddr struct {
	// Index is the ring's index.
	Index uint32
	// Flags is VringFlagLog or 0.
	Flags uint32
	// Descriptor is the address of the descriptor table.
	Descriptor uint64
	// Used is the address of the used ring.
	Used uint64
	// Available is the address of the available ring.
	Available uint64
	// Log is the used ring's guest-physical address, for dirty logging
	// with VringFlagLog.
	Log uint64
}

// WireSize is VringAddrSize.
func (VringAddr) WireSize() int { return VringAddrSize }

// Put writes a into b.
func (a VringAddr) Put(b []byte) {
	le.PutUint32(b[0:], a.Index)
	le.PutUint32(b[4:], a.Flags)
	le.PutUint64(b[8:], a.Descriptor)
	le.PutUint64(b[16:], a.Used)
	le.PutUint64(b[24:], a.Available)
	le.PutUint64(b[32:], a.Log)
}

func (VringAddr) decode(b []byte) VringAddr {
	return VringAddr{
		Index:      le.Uint32(b[0:]),
		Flags:      le.Uint32(b[4:]),
		Descriptor: le.Uint64(b[8:]),
		Used:       le.Uint64(b[16:]),
		Available:  le.Uint64(b[24:]),
		Log:        le.Uint64(b[32:]),
	}
}

func (a VringAddr) ring() uint32 { return a.Index }

const (
	// VringIndexMask extracts the ring index from a kick/call/err payload.
	VringIndexMask = 0xff
	// VringNoFd marks a kick/call/err message that carries no descriptor.
	VringNoFd = 0x100
)

// VringFd is the body of SET_VRING_KICK, SET_VRING_CALL and SET_VRING_ERR:
// a u64 whose low byte is the ring's index (VringIndexMask) and whose bit
// VringNoFd says that no descriptor comes with it. Other bits are ignored.
type VringFd struct {
	// Index is the ring's index, up to VringIndexMask.
	Index uint32
	// NoFd is set when the message carries no descriptor.
	NoFd bool
}

// WireSize is VringFdSize.
func (VringFd) WireSize() int { return VringFdSize }

// Put writes f into b.
func (f VringFd) Put(b []byte) {
	v := uint64(f.Index & VringIndexMask)
	if f.NoFd {
		v |= VringNoFd
	}
	le.PutUint64(b, v)
}

func (VringFd) decode(b []byte) VringFd {
	v := le.Uint64(b)
	return VringFd{Index: uint32(v & VringIndexMask), NoFd: v&VringNoFd != 0}
}

func (f VringFd) ring() uint32 { return f.Index }

// MemoryRegion describes one region of guest memory: SET_MEM_TABLE holds
// one per region, ADD_MEM_REG and REM_MEM_REG one each (SingleMemoryRegion).
type MemoryRegion struct {
	// GuestAddr is the region's guest-physical address.
	GuestAddr uint64
	// Size is the region's size in bytes.
	Size uint64
	// UserAddr is the region's address in the front-end's address space,
	// which ring addresses (VringAddr) are given in.
	UserAddr uint64
	// MmapOffset is where the region starts in the descriptor that
	// comes with it.
	MmapOffset uint64
}

// WireSize is MemRegionSize.
func (MemoryRegion) WireSize() int { return MemRegionSize }

// Put writes r into b.
func (r MemoryRegion) Put(b []byte) {
	le.PutUint64(b[0:], r.GuestAddr)
	le.PutUint64(b[8:], r.Size)
	le.PutUint64(b[16:], r.UserAddr)
	le.PutUint64(b[24:], r.MmapOffset)
}

func (MemoryRegion) decode(b []byte) MemoryRegion {
	return MemoryRegion{GuestAddr: le.Uint64(b[0:]), Size: le.Uint64(b[8:]), UserAddr: le.Uint64(b[16:]), MmapOffset: le.Uint64(b[24:])}
}

// MemoryTable is the body of SET_MEM_TABLE: a header (u32 number of
// regions, u32 padding), then the regions, each mapped from one of the
// message's descriptors, in order.
type MemoryTable struct {
	// Regions are the guest's memory regions.
	Regions []MemoryRegion
}

// WireSize is the table's wire size.
func (t MemoryTable) WireSize() int { return MemoryTableHeaderSize + MemRegionSize*len(t.Regions) }

// Put writes t into b.
func (t MemoryTable) Put(b []byte) {
	le.PutUint32(b[0:], uint32(len(t.Regions)))
	le.PutUint32(b[4:], 0)
	for i, r := range t.Regions {
		r.Put(b[MemoryTableHeaderSize+i*MemRegionSize:])
	}
}

// memoryTable decodes SET_MEM_TABLE's payload, which must hold as many
// regions as the message carries descriptors, up to MaxFds.
func (m *Message) memoryTable() (MemoryTable, error) {
	if len(m.Payload) < MemoryTableHeaderSize {
		return MemoryTable{}, fmt.Errorf("%v payload is %d bytes", m.Request, len(m.Payload))
	}
	n := int(le.Uint32(m.Payload))
	if n > MaxFds || len(m.Payload) < MemoryTableHeaderSize+n*MemRegionSize || len(m.Fds) != n {
		return MemoryTable{}, fmt.Errorf("%v with %d regions, %d bytes and %d fds", m.Request, n, len(m.Payload), len(m.Fds))
	}
	t := MemoryTable{Regions: make([]MemoryRegion, n)}
	for i := range t.Regions {
		t.Regions[i] = MemoryRegion{}.decode(m.Payload[MemoryTableHeaderSize+i*MemRegionSize:])
	}
	return t, nil
}

// SingleMemoryRegion is the body of ADD_MEM_REG and REM_MEM_REG: u64
// padding, then the region.
type SingleMemoryRegion struct {
	// Region is the region added or removed.
	Region MemoryRegion
}

// WireSize is SingleMemoryRegionSize.
func (SingleMemoryRegion) WireSize() int { return SingleMemoryRegionSize }

// Put writes r into b.
func (r SingleMemoryRegion) Put(b []byte) {
	le.PutUint64(b[0:], 0)
	r.Region.Put(b[8:])
}

func (SingleMemoryRegion) decode(b []byte) SingleMemoryRegion {
	return SingleMemoryRegion{Region: MemoryRegion{}.decode(b[8:])}
}

// LogArea is the body of SET_LOG_BASE: where the dirty log bitmap is in
// the descriptor that comes with it.
type LogArea struct {
	// Size is the bitmap's size in bytes.
	Size uint64
	// Offset is where the bitmap starts in the descriptor.
	Offset uint64
}

// WireSize is LogAreaSize.
func (LogArea) WireSize() int { return LogAreaSize }

// Put writes l into b.
func (l LogArea) Put(b []byte) {
	le.PutUint64(b[0:], l.Size)
	le.PutUint64(b[8:], l.Offset)
}

func (LogArea) decode(b []byte) LogArea {
	return LogArea{Size: le.Uint64(b[0:]), Offset: le.Uint64(b[8:])}
}

// DeviceStateTransfer is the body of SET_DEVICE_STATE_FD: which way the
// state moves through the pipe that comes with it, and in which phase.
type DeviceStateTransfer struct {
	// Direction is StateSave (the back-end writes its state) or
	// StateLoad (it reads one).
	Direction uint32
	// Phase is the migration phase; only StatePhaseStopped is known.
	Phase uint32
}

// WireSize is DeviceStateTransferSize.
func (DeviceStateTransfer) WireSize() int { return DeviceStateTransferSize }

// Put writes t into b.
func (t DeviceStateTransfer) Put(b []byte) {
	le.PutUint32(b[0:], t.Direction)
	le.PutUint32(b[4:], t.Phase)
}

func (DeviceStateTransfer) decode(b []byte) DeviceStateTransfer {
	return DeviceStateTransfer{Direction: le.Uint32(b[0:]), Phase: le.Uint32(b[4:])}
}

// ConfigSpace is the header of GET_CONFIG, of its reply and of SET_CONFIG:
// the range of the device configuration space the message is about. Bytes
// of the space follow it (in GET_CONFIG, as many zeroes).
type ConfigSpace struct {
	// Offset is where the range starts in the configuration space.
	Offset uint32
	// Size is the range's size in bytes; a GET_CONFIG reply with 0 is
	// a refusal.
	Size uint32
	// Flags are the message's flags (SET_CONFIG's migration flag).
	Flags uint32
}

// WireSize is ConfigSpaceSize.
func (ConfigSpace) WireSize() int { return ConfigSpaceSize }

// Put writes c into b.
func (c ConfigSpace) Put(b []byte) {
	le.PutUint32(b[0:], c.Offset)
	le.PutUint32(b[4:], c.Size)
	le.PutUint32(b[8:], c.Flags)
}

func (ConfigSpace) decode(b []byte) ConfigSpace {
	return ConfigSpace{Offset: le.Uint32(b[0:]), Size: le.Uint32(b[4:]), Flags: le.Uint32(b[8:])}
}

// ShmemConfig is the body of GET_SHMEM_CONFIG's reply: the sizes of the
// device's shared memory regions (u32 count, u32 padding, then
// MaxShmemRegions u64 sizes).
type ShmemConfig struct {
	// NumRegions is how many of Sizes are regions.
	NumRegions uint32
	// Sizes are the regions' sizes in bytes, region i at i.
	Sizes [MaxShmemRegions]uint64
}

// WireSize is ShmemConfigSize.
func (ShmemConfig) WireSize() int { return ShmemConfigSize }

// Put writes c into b.
func (c ShmemConfig) Put(b []byte) {
	le.PutUint32(b[0:], c.NumRegions)
	le.PutUint32(b[4:], 0)
	for i, s := range c.Sizes {
		le.PutUint64(b[8+8*i:], s)
	}
}

func (ShmemConfig) decode(b []byte) ShmemConfig {
	c := ShmemConfig{NumRegions: le.Uint32(b[0:])}
	for i := range c.Sizes {
		c.Sizes[i] = le.Uint64(b[8+8*i:])
	}
	return c
}

// ShmemMapRW is ShmemMap.Flags' bit for a writable mapping (else it is
// read-only).
const ShmemMapRW = 1

// ShmemMap is the body of the back-end channel's SHMEM_MAP and SHMEM_UNMAP
// (u8 shmid, 7 bytes of padding, then the u64 fields): map Len bytes of the
// message's descriptor at FdOffset into shared memory region ShmID at
// ShmOffset, or unmap that range of the region.
type ShmemMap struct {
	// ShmID is the shared memory region (the DAX window is 0).
	ShmID uint8
	// FdOffset is where the range starts in the descriptor (SHMEM_MAP).
	FdOffset uint64
	// ShmOffset is where the range starts in the region.
	ShmOffset uint64
	// Len is the range's size in bytes.
	Len uint64
	// Flags is ShmemMapRW or 0 (SHMEM_MAP).
	Flags uint64
}

// WireSize is ShmemMapSize.
func (ShmemMap) WireSize() int { return ShmemMapSize }

// Put writes s into b.
func (s ShmemMap) Put(b []byte) {
	b[0] = s.ShmID
	clear(b[1:8])
	le.PutUint64(b[8:], s.FdOffset)
	le.PutUint64(b[16:], s.ShmOffset)
	le.PutUint64(b[24:], s.Len)
	le.PutUint64(b[32:], s.Flags)
}

func (ShmemMap) decode(b []byte) ShmemMap {
	return ShmemMap{ShmID: b[0], FdOffset: le.Uint64(b[8:]), ShmOffset: le.Uint64(b[16:]), Len: le.Uint64(b[24:]), Flags: le.Uint64(b[32:])}
}

// Legacy virtio-fs slot flags (FSSlot.Flags).
const (
	// FSFlagRead maps the range readable.
	FSFlagRead = 1
	// FSFlagWrite maps the range writable.
	FSFlagWrite = 2
)

// FSSlot is one range of a legacy virtio-fs back-end request.
type FSSlot struct {
	// FdOffset is where the range starts in the message's descriptor
	// (FS_MAP).
	FdOffset uint64
	// CacheOffset is where the range starts in the DAX window.
	CacheOffset uint64
	// Len is the range's size in bytes; 0 leaves the slot unused.
	Len uint64
	// Flags are FSFlagRead and FSFlagWrite (FS_MAP).
	Flags uint64
}

// FSMsg is the body of the legacy virtio-fs FS_MAP, FS_UNMAP and FS_SYNC
// on the back-end channel: up to FSMsgSlots ranges. On the wire the slots'
// fields are four arrays of FSMsgSlots u64 each: the fd offsets, the cache
// offsets, the lengths, the flags.
type FSMsg struct {
	// Slots are the ranges; those with Len 0 are unused.
	Slots [FSMsgSlots]FSSlot
}

// WireSize is FSMsgSize.
func (FSMsg) WireSize() int { return FSMsgSize }

// Put writes m into b.
func (m FSMsg) Put(b []byte) {
	for i, s := range m.Slots {
		le.PutUint64(b[8*i:], s.FdOffset)
		le.PutUint64(b[8*(FSMsgSlots+i):], s.CacheOffset)
		le.PutUint64(b[8*(2*FSMsgSlots+i):], s.Len)
		le.PutUint64(b[8*(3*FSMsgSlots+i):], s.Flags)
	}
}

func (FSMsg) decode(b []byte) FSMsg {
	var m FSMsg
	for i := range m.Slots {
		m.Slots[i] = FSSlot{
			FdOffset:    le.Uint64(b[8*i:]),
			CacheOffset: le.Uint64(b[8*(FSMsgSlots+i):]),
			Len:         le.Uint64(b[8*(2*FSMsgSlots+i):]),
			Flags:       le.Uint64(b[8*(3*FSMsgSlots+i):]),
		}
	}
	return m
}
