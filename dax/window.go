// Package dax keeps the books of the DAX window: which range of which file
// the VMM has mapped at which offset of the virtio-fs shared memory region,
// and it turns the guest's FUSE_SETUPMAPPING and FUSE_REMOVEMAPPING into
// map and unmap requests to the VMM.
//
// It sits between the FUSE server, which decodes the guest's requests, and
// the vhost-user back-end channel, which carries the requests to the VMM
// (Channel). Files come from the host filesystem layer (Files). Every
// offset and length the guest sends is checked against the window size and
// alignment here, before anything is asked of the VMM; the descriptors of
// mapped files are kept open for as long as they are mapped.
package dax

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mapping flags of FUSE_SETUPMAPPING.
const (
	FlagWrite = 1
	FlagRead  = 2
)

// Channel asks the VMM to map file ranges into the window.
type Channel interface {
	// Map maps length bytes of fd at fdOffset at windowOffset.
	Map(fd int, fdOffset, windowOffset, length uint64, writable bool) error
	// Unmap returns length bytes at windowOffset to the empty state.
	Unmap(windowOffset, length uint64) error
}

// Files opens files for mapping.
type Files interface {
	// MappingFd returns a new descriptor of the regular file behind
	// nodeID, opened for reading, and for writing too when writable. The
	// window owns and closes it.
	MappingFd(nodeID uint64, writable bool) (int, syscall.Errno)
}

// mapping is one range of the window backed by a file.
type mapping struct {
	moff, length uint64
	file         *file
	foff         uint64
	writable     bool
}

// file is a descriptor shared by the mappings cut from one setup.
type file struct {
	fd   int
	refs int
}

func (f *file) put() {
	if f.refs--; f.refs == 0 {
		unix.Close(f.fd)
	}
}

// Window is the DAX window of one device.
type Window struct {
	size      uint64
	alignment uint64
	ch        Channel
	files     Files

	mu       sync.Mutex
	mappings []mapping // sorted by moff, non-overlapping
}

// NewWindow returns the books of a window of size bytes whose mappings
// must be aligned to alignment (a power of two, at most 2 MiB).
func NewWindow(size, alignment uint64, ch Channel, files Files) (*Window, error) {
	if alignment == 0 || alignment&(alignment-1) != 0 || alignment > 2<<20 {
		return nil, fmt.Errorf("DAX alignment %d is not a power of two up to 2 MiB", alignment)
	}
	if size == 0 || size%alignment != 0 {
		return nil, fmt.Errorf("DAX window size %d is not a non-zero multiple of %d", size, alignment)
	}
	return &Window{size: size, alignment: alignment, ch: ch, files: files}, nil
}

// Size returns the window size.
func (w *Window) Size() uint64 { return w.size }

// AlignmentLog2 returns log2 of the alignment, for INIT's map_alignment.
func (w *Window) AlignmentLog2() uint16 {
	n := uint16(0)
	for a := w.alignment; a > 1; a >>= 1 {
		n++
	}
	return n
}

// Count returns the number of mapped ranges.
func (w *Window) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.mappings)
}

func (w *Window) check(foff, moff, length uint64) syscall.Errno {
	a := w.alignment - 1
	switch {
	case length == 0:
		return syscall.EINVAL
	case moff&a != 0 || foff&a != 0 || length&a != 0:
		return syscall.EINVAL
	case moff >= w.size || length > w.size-moff:
		return syscall.EINVAL
	case foff+length < foff || int64(foff+length) < 0:
		return syscall.EINVAL
	}
	return 0
}

// Setup maps length bytes of node's file at foff to window offset moff.
// Whatever was mapped in that range before is replaced, which is how the
// guest upgrades a read-only range to read-write.
func (w *Window) Setup(nodeID, foff, length, flags, moff uint64) syscall.Errno {
	if e := w.check(foff, moff, length); e != 0 {
		return e
	}
	writable := flags&FlagWrite != 0
	fd, e := w.files.MappingFd(nodeID, writable)
	if e != 0 {
		return e
	}
	f := &file{fd: fd, refs: 1}
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.removeLocked(moff, length); e != 0 {
		f.put()
		return e
	}
	if err := w.ch.Map(fd, foff, moff, length, writable); err != nil {
		f.put()
		return errnoOf(err)
	}
	w.insertLocked(mapping{moff: moff, length: length, file: f, foff: foff, writable: writable})
	return 0
}

// Remove unmaps [moff, moff+length). Parts of larger mappings outside the
// range stay mapped.
func (w *Window) Remove(moff, length uint64) syscall.Errno {
	if length == 0 || moff >= w.size || length > w.size-moff {
		return syscall.EINVAL
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.removeLocked(moff, length)
}

// removeLocked clears a range: every mapping touching it is unmapped whole
// (the generic protocol cannot unmap part of a mapping) and what lies
// outside the range is mapped again.
func (w *Window) removeLocked(moff, length uint64) syscall.Errno {
	end := moff + length
	var keep, hit []mapping
	for _, m := range w.mappings {
		if m.moff < end && moff < m.moff+m.length {
			hit = append(hit, m)
		} else {
			keep = append(keep, m)
		}
	}
	if len(hit) == 0 {
		return 0
	}
	var firstErr error
	for _, m := range hit {
		if err := w.ch.Unmap(m.moff, m.length); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	w.mappings = keep
	for _, m := range hit {
		// The pieces left of and right of the removed range.
		if m.moff < moff {
			left := mapping{moff: m.moff, length: moff - m.moff, file: m.file, foff: m.foff, writable: m.writable}
			w.remapLocked(left, &firstErr)
		}
		if mEnd := m.moff + m.length; mEnd > end {
			right := mapping{moff: end, length: mEnd - end, file: m.file, foff: m.foff + (end - m.moff), writable: m.writable}
			w.remapLocked(right, &firstErr)
		}
		m.file.put()
	}
	if firstErr != nil {
		return errnoOf(firstErr)
	}
	return 0
}

func (w *Window) remapLocked(m mapping, firstErr *error) {
	if err := w.ch.Map(m.file.fd, m.foff, m.moff, m.length, m.writable); err != nil {
		if *firstErr == nil {
			*firstErr = err
		}
		return
	}
	m.file.refs++
	w.insertLocked(m)
}

func (w *Window) insertLocked(m mapping) {
	i := sort.Search(len(w.mappings), func(i int) bool { return w.mappings[i].moff >= m.moff })
	w.mappings = append(w.mappings, mapping{})
	copy(w.mappings[i+1:], w.mappings[i:])
	w.mappings[i] = m
}

// Reset unmaps everything (DESTROY, a new INIT, a device reset). With
// unmap false the VMM is gone and only the descriptors are released.
func (w *Window) Reset(unmap bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.mappings {
		if unmap {
			w.ch.Unmap(m.moff, m.length)
		}
		m.file.put()
	}
	w.mappings = nil
}

// Mapped returns a copy of the books, for tests and debugging: window
// offset, length, file offset and writability of each range.
func (w *Window) Mapped() [][4]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([][4]uint64, len(w.mappings))
	for i, m := range w.mappings {
		rw := uint64(0)
		if m.writable {
			rw = 1
		}
		out[i] = [4]uint64{m.moff, m.length, m.foff, rw}
	}
	return out
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
