// Package virtqueue implements the device side of virtio split rings over
// guest memory shared by the VMM.
//
// It sits between vhostuser (which receives the memory table and ring
// addresses from the front-end) and the device logic (which consumes
// descriptor chains). Every address and length in this package comes from the
// guest and is untrusted: MemoryTable is the single place where a guest
// address becomes a host slice, and DescriptorChain walks are bounded by the
// queue size, so a hostile driver can make a request fail but can never make
// the daemon touch memory outside the regions the VMM shared.
package virtqueue

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// ErrBadAddress reports a guest address range that is not wholly inside the
// mapped guest memory.
var ErrBadAddress = errors.New("guest address outside mapped memory")

// Region is one guest memory region as the front-end describes it.
type Region struct {
	GuestAddr  uint64 // guest physical address of the first byte
	Size       uint64 // length in bytes
	UserAddr   uint64 // the front-end's virtual address of the first byte
	MmapOffset uint64 // offset of the first byte in the backing fd
}

// MappedRegion is a Region mapped into this process.
type MappedRegion struct {
	Region
	mapping []byte // the whole mmap, MmapOffset+Size long
	data    []byte // mapping[MmapOffset:]
}

// MapRegion maps r from fd (MAP_SHARED, read-write). The caller keeps
// ownership of fd and may close it once this returns.
func MapRegion(r Region, fd int) (*MappedRegion, error) {
	if r.Size == 0 {
		return nil, fmt.Errorf("memory region at guest address %#x has size 0", r.GuestAddr)
	}
	total := r.MmapOffset + r.Size
	if total < r.Size || total > 1<<48 || r.GuestAddr+r.Size < r.GuestAddr || r.UserAddr+r.Size < r.UserAddr {
		return nil, fmt.Errorf("memory region at guest address %#x: size %#x with offset %#x overflows", r.GuestAddr, r.Size, r.MmapOffset)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("memory region at guest address %#x: %w", r.GuestAddr, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < total {
		// Touching the part past the end of the file would kill the
		// daemon with SIGBUS.
		return nil, fmt.Errorf("memory region at guest address %#x needs %d bytes of its file, which has %d", r.GuestAddr, total, st.Size)
	}
	m, err := unix.Mmap(fd, 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap guest memory region at %#x (%d bytes): %w", r.GuestAddr, total, err)
	}
	return &MappedRegion{Region: r, mapping: m, data: m[r.MmapOffset:]}, nil
}

// Unmap releases the mapping. The region must no longer be in use.
func (m *MappedRegion) Unmap() {
	if m.mapping != nil {
		unix.Munmap(m.mapping)
		m.mapping, m.data = nil, nil
	}
}

// Bytes returns the whole mapped region.
func (m *MappedRegion) Bytes() []byte { return m.data }

// MemoryTable is an immutable set of mapped, non-overlapping guest memory
// regions. Changing the memory layout builds a new table.
type MemoryTable struct {
	byGuest []*MappedRegion // sorted by GuestAddr
	byUser  []*MappedRegion // sorted by UserAddr
}

// NewMemoryTable builds a table over the given regions. It rejects regions
// that overlap in either address space.
func NewMemoryTable(regions []*MappedRegion) (*MemoryTable, error) {
	t := &MemoryTable{
		byGuest: append([]*MappedRegion(nil), regions...),
		byUser:  append([]*MappedRegion(nil), regions...),
	}
	sort.Slice(t.byGuest, func(i, j int) bool { return t.byGuest[i].GuestAddr < t.byGuest[j].GuestAddr })
	sort.Slice(t.byUser, func(i, j int) bool { return t.byUser[i].UserAddr < t.byUser[j].UserAddr })
	for i := 1; i < len(regions); i++ {
		if p, c := t.byGuest[i-1], t.byGuest[i]; p.GuestAddr+p.Size > c.GuestAddr {
			return nil, fmt.Errorf("memory regions at guest addresses %#x and %#x overlap", p.GuestAddr, c.GuestAddr)
		}
		if p, c := t.byUser[i-1], t.byUser[i]; p.UserAddr+p.Size > c.UserAddr {
			return nil, fmt.Errorf("memory regions at front-end addresses %#x and %#x overlap", p.UserAddr, c.UserAddr)
		}
	}
	return t, nil
}

// Regions returns the table's regions ordered by guest address.
func (t *MemoryTable) Regions() []*MappedRegion {
	if t == nil {
		return nil
	}
	return t.byGuest
}

func find(rs []*MappedRegion, addr uint64, start func(*MappedRegion) uint64) *MappedRegion {
	// Tables are tiny (a handful of regions); a linear scan beats a binary
	// search and allocates nothing.
	for _, r := range rs {
		s := start(r)
		if addr >= s && addr-s < r.Size {
			return r
		}
	}
	return nil
}

func guestStart(r *MappedRegion) uint64 { return r.GuestAddr }
func userStart(r *MappedRegion) uint64  { return r.UserAddr }

// Slice returns the host bytes for length bytes at guest physical address
// gpa, which must lie within a single region.
func (t *MemoryTable) Slice(gpa, length uint64) ([]byte, error) {
	if t == nil {
		return nil, ErrBadAddress
	}
	r := find(t.byGuest, gpa, guestStart)
	if r == nil {
		return nil, ErrBadAddress
	}
	off := gpa - r.GuestAddr
	if length > r.Size-off {
		return nil, ErrBadAddress
	}
	return r.data[off : off+length : off+length], nil
}

// UserSlice is Slice for an address in the front-end's virtual address
// space, the form in which vring addresses arrive.
func (t *MemoryTable) UserSlice(uaddr, length uint64) ([]byte, error) {
	if t == nil {
		return nil, ErrBadAddress
	}
	r := find(t.byUser, uaddr, userStart)
	if r == nil {
		return nil, ErrBadAddress
	}
	off := uaddr - r.UserAddr
	if length > r.Size-off {
		return nil, ErrBadAddress
	}
	return r.data[off : off+length : off+length], nil
}

// AppendSegments appends the host slices covering length bytes at gpa to
// segs. Unlike Slice, the range may cross from one region into an adjacent
// one. Zero-length ranges append nothing.
func (t *MemoryTable) AppendSegments(segs [][]byte, gpa, length uint64) ([][]byte, error) {
	return t.appendSegments(segs, gpa, length, -1)
}

// appendSegments is AppendSegments that fails with ErrTooManySegments,
// appending no more, where segs would grow past limit segments (-1: no
// limit). So segs never grows past it.
func (t *MemoryTable) appendSegments(segs [][]byte, gpa, length uint64, limit int) ([][]byte, error) {
	if t == nil {
		return segs, ErrBadAddress
	}
	if gpa+length < gpa {
		return segs, ErrBadAddress
	}
	for length > 0 {
		r := find(t.byGuest, gpa, guestStart)
		if r == nil {
			return segs, ErrBadAddress
		}
		if len(segs) == limit {
			return segs, ErrTooManySegments
		}
		off := gpa - r.GuestAddr
		n := min(length, r.Size-off)
		segs = append(segs, r.data[off:off+n:off+n])
		gpa += n
		length -= n
	}
	return segs, nil
}
