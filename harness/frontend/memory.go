package frontend

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// MemoryLayout describes the guest RAM a Frontend shares.
type MemoryLayout struct {
	// Size is the RAM size in bytes; 256 MiB when 0. It is rounded up to
	// a multiple of 2 MiB.
	Size uint64
	// Regions is 1 or 2 (0 means 1). Two regions split the memfd in
	// halves, the second with a non-zero mmap offset, as QEMU splits RAM
	// around the PCI hole.
	Regions int
	// HighGPA is the guest physical address of the second region; 0 puts
	// it right after the first (contiguous guest addresses, so a buffer
	// may cross the boundary). Set it to e.g. 4 GiB for a hole.
	HighGPA uint64
	// UserBase is the front-end virtual address reported for the first
	// byte of the memfd; 0 uses the address at which this process mapped
	// it, as QEMU does. Vring addresses are translated consistently.
	UserBase uint64
}

// reservedLow is the start of region 0 that the allocator never hands
// out, so that guest address 0 is never a buffer by accident.
const reservedLow = 64 << 10

const (
	minClassShift = 6  // 64 B
	numClasses    = 40 // up to 2^45 B
)

// GuestMemory is the guest RAM: a memfd mapped into this process, split
// into regions, with a simple size-class allocator for rings and buffers.
// It is safe for concurrent use.
type GuestMemory struct {
	fd      int
	mapping []byte
	regions []virtqueue.Region

	mu   sync.Mutex
	free [numClasses][]uint64 // freed guest addresses per size class
	bump []uint64             // next unallocated offset in each region
	rr   int                  // region the next bump allocation tries first
}

// NewGuestMemory creates and maps the memfd and lays out the regions.
func NewGuestMemory(l MemoryLayout) (*GuestMemory, error) {
	if l.Size == 0 {
		l.Size = 256 << 20
	}
	l.Size = (l.Size + 2<<20 - 1) &^ (2<<20 - 1)
	if l.Regions == 0 {
		l.Regions = 1
	}
	if l.Regions != 1 && l.Regions != 2 {
		return nil, fmt.Errorf("frontend: %d memory regions, want 1 or 2", l.Regions)
	}
	fd, err := unix.MemfdCreate("govirtiofsd-frontend-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("frontend: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(l.Size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frontend: sizing guest RAM to %d bytes: %w", l.Size, err)
	}
	mapping, err := unix.Mmap(fd, 0, int(l.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frontend: mapping guest RAM: %w", err)
	}
	user := l.UserBase
	if user == 0 {
		user = uint64(uintptr(unsafe.Pointer(&mapping[0])))
	}
	m := &GuestMemory{fd: fd, mapping: mapping}
	if l.Regions == 1 {
		m.regions = []virtqueue.Region{{GuestAddr: 0, Size: l.Size, UserAddr: user, MmapOffset: 0}}
	} else {
		half := l.Size / 2
		high := l.HighGPA
		if high == 0 {
			high = half
		}
		if high < half {
			unix.Munmap(mapping)
			unix.Close(fd)
			return nil, fmt.Errorf("frontend: second region at %#x overlaps the first (%#x bytes)", high, half)
		}
		m.regions = []virtqueue.Region{
			{GuestAddr: 0, Size: half, UserAddr: user, MmapOffset: 0},
			{GuestAddr: high, Size: half, UserAddr: user + half, MmapOffset: half},
		}
	}
	m.bump = make([]uint64, len(m.regions))
	m.bump[0] = reservedLow
	return m, nil
}

// Close unmaps the RAM and closes the memfd. No buffer may be in use.
func (m *GuestMemory) Close() error {
	if m.mapping == nil {
		return nil
	}
	err := unix.Munmap(m.mapping)
	unix.Close(m.fd)
	m.mapping = nil
	return err
}

// Fd returns the memfd backing the RAM.
func (m *GuestMemory) Fd() int { return m.fd }

// Regions returns the regions as they are registered with the back-end.
func (m *GuestMemory) Regions() []virtqueue.Region { return m.regions }

// Size returns the RAM size in bytes.
func (m *GuestMemory) Size() uint64 { return uint64(len(m.mapping)) }

// ErrOutOfMemory means the guest RAM has no room for an allocation.
var ErrOutOfMemory = errors.New("frontend: guest memory exhausted")

func (m *GuestMemory) region(gpa uint64) int {
	for i, r := range m.regions {
		if gpa >= r.GuestAddr && gpa-r.GuestAddr < r.Size {
			return i
		}
	}
	return -1
}

// Bytes returns the host bytes of n bytes of guest memory at gpa. The range
// may cross from one region into the next only where both guest addresses
// and memfd offsets are contiguous.
func (m *GuestMemory) Bytes(gpa, n uint64) ([]byte, error) {
	i := m.region(gpa)
	if i < 0 || gpa+n < gpa {
		return nil, fmt.Errorf("frontend: guest range %#x+%#x is not in guest RAM", gpa, n)
	}
	r := m.regions[i]
	start := r.MmapOffset + (gpa - r.GuestAddr)
	end, rEnd := gpa+n, r.GuestAddr+r.Size
	for end > rEnd {
		if i+1 >= len(m.regions) {
			return nil, fmt.Errorf("frontend: guest range %#x+%#x runs past guest RAM", gpa, n)
		}
		next := m.regions[i+1]
		if next.GuestAddr != rEnd || next.MmapOffset != r.MmapOffset+r.Size {
			return nil, fmt.Errorf("frontend: guest range %#x+%#x crosses a hole between regions", gpa, n)
		}
		i, r, rEnd = i+1, next, next.GuestAddr+next.Size
	}
	return m.mapping[start : start+n : start+n], nil
}

// UserAddr translates a guest physical address to the front-end virtual
// address the back-end was told about (vring addresses use these).
func (m *GuestMemory) UserAddr(gpa uint64) (uint64, error) {
	i := m.region(gpa)
	if i < 0 {
		return 0, fmt.Errorf("frontend: guest address %#x is not in guest RAM", gpa)
	}
	return m.regions[i].UserAddr + (gpa - m.regions[i].GuestAddr), nil
}

func sizeClass(n uint64) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len64(n-1) - minClassShift
}

// ClassSize returns the size an allocation of n bytes actually takes.
func ClassSize(n uint64) uint64 { return 1 << (sizeClass(n) + minClassShift) }

// Alloc returns the guest address of at least n bytes (ClassSize(n)),
// aligned to min(ClassSize(n), 4096). Fresh memory alternates between
// regions, so buffers land in both; freed memory is reused first. In
// steady state it allocates nothing.
func (m *GuestMemory) Alloc(n uint64) (uint64, error) { return m.alloc(n, -1) }

// AllocIn is Alloc restricted to one region (rings and indirect tables live
// in region 0, where the virtqueue.Driver sees them).
func (m *GuestMemory) AllocIn(region int, n uint64) (uint64, error) {
	if region < 0 || region >= len(m.regions) {
		return 0, fmt.Errorf("frontend: no memory region %d", region)
	}
	return m.alloc(n, region)
}

func (m *GuestMemory) alloc(n uint64, region int) (uint64, error) {
	if n == 0 {
		n = 1
	}
	c := sizeClass(n)
	if c >= numClasses {
		return 0, ErrOutOfMemory
	}
	size := uint64(1) << (c + minClassShift)
	align := min(size, 4096)
	m.mu.Lock()
	defer m.mu.Unlock()
	fl := m.free[c]
	for i := len(fl) - 1; i >= 0; i-- {
		if region < 0 || m.region(fl[i]) == region {
			gpa := fl[i]
			fl[i] = fl[len(fl)-1]
			m.free[c] = fl[:len(fl)-1]
			return gpa, nil
		}
	}
	try := func(i int) (uint64, bool) {
		r := m.regions[i]
		off := (m.bump[i] + align - 1) &^ (align - 1)
		if off > r.Size || r.Size-off < size {
			return 0, false
		}
		m.bump[i] = off + size
		return r.GuestAddr + off, true
	}
	if region >= 0 {
		if gpa, ok := try(region); ok {
			return gpa, nil
		}
		return 0, ErrOutOfMemory
	}
	for k := range m.regions {
		i := (m.rr + k) % len(m.regions)
		if gpa, ok := try(i); ok {
			m.rr = (i + 1) % len(m.regions)
			return gpa, nil
		}
	}
	return 0, ErrOutOfMemory
}

// Free returns an allocation of n bytes at gpa (n as passed to Alloc).
func (m *GuestMemory) Free(gpa, n uint64) {
	if n == 0 {
		n = 1
	}
	c := sizeClass(n)
	m.mu.Lock()
	m.free[c] = append(m.free[c], gpa)
	m.mu.Unlock()
}
