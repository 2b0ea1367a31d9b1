package frontend

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Window is a DAX window: a virtio shared memory region that the VMM owns
// and the back-end fills with file mappings over the back-end channel. It
// is a PROT_NONE reservation; Map places MAP_SHARED|MAP_FIXED file mappings
// inside it and Unmap turns ranges back into PROT_NONE reservation, as
// QEMU does with its cache BAR.
type Window struct {
	mu   sync.RWMutex
	base unsafe.Pointer
	size uint64
	maps []Mapping // sorted by Offset, non-overlapping
}

// Mapping is one file range mapped into a Window.
type Mapping struct {
	Offset   uint64 // offset in the window
	Len      uint64
	FdOffset uint64 // offset in the file
	Prot     int    // PROT_READ, PROT_WRITE
}

const pageSize = 4096

// NewWindow reserves a window of size bytes (a multiple of 4 KiB).
func NewWindow(size uint64) (*Window, error) {
	if size == 0 || size%pageSize != 0 || size > 1<<46 {
		return nil, fmt.Errorf("frontend: window size %#x is not a non-zero multiple of 4 KiB", size)
	}
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size), unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("frontend: reserving a %d-byte window: %w", size, err)
	}
	return &Window{base: p, size: size}, nil
}

// Close releases the whole window.
func (w *Window) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return nil
	}
	err := unix.MunmapPtr(w.base, uintptr(w.size))
	w.base, w.maps = nil, nil
	return err
}

// Size returns the window size.
func (w *Window) Size() uint64 { return w.size }

// Bytes returns the window's memory. Touching a range that is not mapped
// faults (a fatal error unless debug.SetPanicOnFault is on); ReadAt and
// WriteAt turn such faults into errors.
func (w *Window) Bytes() []byte { return unsafe.Slice((*byte)(w.base), w.size) }

// Mappings returns a copy of the current mappings, ordered by offset.
func (w *Window) Mappings() []Mapping {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return append([]Mapping(nil), w.maps...)
}

// Errors for window requests.
var (
	ErrWindowRange = errors.New("range outside the window")
	ErrUnaligned   = errors.New("offset or length not page aligned")
	ErrOverlap     = errors.New("range overlaps an existing mapping")
	ErrNoMapping   = errors.New("no mapping matches the range")
)

func (w *Window) check(off, length uint64) error {
	if w.base == nil {
		return errors.New("window closed")
	}
	if length == 0 || off+length < off || off+length > w.size {
		return fmt.Errorf("%w: %#x+%#x in a %#x-byte window", ErrWindowRange, off, length, w.size)
	}
	if off%pageSize != 0 || length%pageSize != 0 {
		return fmt.Errorf("%w: %#x+%#x", ErrUnaligned, off, length)
	}
	return nil
}

func (w *Window) overlaps(off, length uint64) bool {
	for _, m := range w.maps {
		if m.Offset < off+length && off < m.Offset+m.Len {
			return true
		}
	}
	return false
}

// Map maps length bytes of fd at fdOffset at window offset off with prot.
// With replace it maps over whatever is there (legacy FS_MAP); without it
// a range overlapping an existing mapping is refused (SHMEM_MAP). The
// caller keeps fd.
func (w *Window) Map(fd int, fdOffset, off, length uint64, prot int, replace bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(off, length); err != nil {
		return err
	}
	if fd < 0 {
		return errors.New("no file descriptor")
	}
	if fdOffset%pageSize != 0 || fdOffset > 1<<62 {
		return fmt.Errorf("%w: file offset %#x", ErrUnaligned, fdOffset)
	}
	if prot&^(unix.PROT_READ|unix.PROT_WRITE) != 0 {
		return fmt.Errorf("bad protection %#x", prot)
	}
	if !replace && w.overlaps(off, length) {
		return fmt.Errorf("%w: %#x+%#x", ErrOverlap, off, length)
	}
	addr := unsafe.Add(w.base, off)
	if _, err := unix.MmapPtr(fd, int64(fdOffset), addr, uintptr(length), prot, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		// A failed MAP_FIXED may have left the range unmapped: put the
		// reservation back.
		w.reserve(off, length)
		w.forget(off, length)
		return fmt.Errorf("mmap fd %d offset %#x at window %#x+%#x: %w", fd, fdOffset, off, length, err)
	}
	w.forget(off, length)
	w.maps = append(w.maps, Mapping{Offset: off, Len: length, FdOffset: fdOffset, Prot: prot})
	sort.Slice(w.maps, func(i, j int) bool { return w.maps[i].Offset < w.maps[j].Offset })
	return nil
}

// Unmap turns a range back into reservation. With exact the range must be
// exactly one existing mapping (SHMEM_UNMAP); otherwise any range inside
// the window is accepted and mappings are trimmed (legacy FS_UNMAP).
func (w *Window) Unmap(off, length uint64, exact bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(off, length); err != nil {
		return err
	}
	if exact {
		found := false
		for _, m := range w.maps {
			if m.Offset == off && m.Len == length {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w: %#x+%#x", ErrNoMapping, off, length)
		}
	}
	if err := w.reserve(off, length); err != nil {
		return err
	}
	w.forget(off, length)
	return nil
}

func (w *Window) reserve(off, length uint64) error {
	_, err := unix.MmapPtr(-1, 0, unsafe.Add(w.base, off), uintptr(length), unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("re-reserving window %#x+%#x: %w", off, length, err)
	}
	return nil
}

// forget drops [off, off+length) from the mapping list, trimming partial
// overlaps.
func (w *Window) forget(off, length uint64) {
	end := off + length
	var keep []Mapping
	for _, m := range w.maps {
		mEnd := m.Offset + m.Len
		if mEnd <= off || m.Offset >= end {
			keep = append(keep, m)
			continue
		}
		if m.Offset < off {
			keep = append(keep, Mapping{Offset: m.Offset, Len: off - m.Offset, FdOffset: m.FdOffset, Prot: m.Prot})
		}
		if mEnd > end {
			keep = append(keep, Mapping{Offset: end, Len: mEnd - end, FdOffset: m.FdOffset + (end - m.Offset), Prot: m.Prot})
		}
	}
	w.maps = keep
}

// Sync msyncs a mapped range.
func (w *Window) Sync(off, length uint64) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if length == 0 || off+length < off || off+length > w.size {
		return fmt.Errorf("%w: %#x+%#x in a %#x-byte window", ErrWindowRange, off, length, w.size)
	}
	start := off &^ (pageSize - 1)
	n := (length + off - start + pageSize - 1) &^ (pageSize - 1)
	if err := w.check(start, n); err != nil {
		return err
	}
	return unix.Msync(w.Bytes()[start:start+n], unix.MS_SYNC)
}

// ReadAt copies window bytes at off into p. Reading an unmapped range (or a
// file page beyond EOF) returns an error instead of crashing.
func (w *Window) ReadAt(p []byte, off int64) (int, error) {
	return w.access(p, off, false)
}

// WriteAt copies p into the window at off; like ReadAt, faults are errors.
func (w *Window) WriteAt(p []byte, off int64) (int, error) {
	return w.access(p, off, true)
}

func (w *Window) access(p []byte, off int64, write bool) (n int, err error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.base == nil {
		return 0, errors.New("window closed")
	}
	if off < 0 || uint64(off) > w.size || uint64(len(p)) > w.size-uint64(off) {
		return 0, fmt.Errorf("%w: %#x+%#x", ErrWindowRange, off, len(p))
	}
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			n, err = 0, fmt.Errorf("frontend: fault accessing window %#x+%#x: %v", off, len(p), r)
		}
	}()
	b := w.Bytes()[off : off+int64(len(p))]
	if write {
		return copy(b, p), nil
	}
	return copy(p, b), nil
}
