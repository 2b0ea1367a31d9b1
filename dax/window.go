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
//
// A VMM that cannot map past the end of a file (QEMU 11.1's SHMEM_MAP) gets
// only the whole pages of a file that exist: such a mapping is clamped, the
// books remember how far the guest's range goes on, and Grow maps more as
// the file grows, before the guest learns of the new size.
package dax

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
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
	// MapsPastEOF reports whether the VMM maps a range that reaches past
	// the end of its file, as a plain mmap does (the legacy FS_MAP
	// transports). QEMU 11.1's SHMEM_MAP does not: it refuses a range
	// longer than the file and would even extend an empty writable file to
	// the range's size. The window asks once, in NewWindow.
	MapsPastEOF() bool
}

// Files opens files for mapping.
type Files interface {
	// MappingFd returns a new descriptor of the regular file behind
	// nodeID, opened for reading, and for writing too when writable. The
	// window owns and closes it.
	MappingFd(nodeID uint64, writable bool) (int, syscall.Errno)
	// InodeDAX reports whether the guest should reach nodeID's file
	// through the window when it mounted with dax=inode (FUSE_ATTR_DAX).
	// parent is the directory the node was found in, or 0 when the
	// request did not name one.
	InodeDAX(nodeID, parent uint64) bool
}

// ErrUnmappable is what a mapping gets, with a VMM that cannot map past
// the end of a file, when the guest's range holds the file's last page
// and that page is partial, or when none of the range exists: mapping
// less would leave part of the guest's range unbacked, and the guest would
// read zeros there instead of the file.
const ErrUnmappable = syscall.EIO

// extent is a window range the guest mapped with one FUSE_SETUPMAPPING (or
// what a partial remove left of one).
type extent struct {
	moff, length uint64 // the range as the guest sees it
	foff         uint64
	file         *file
	node         uint64
	writable     bool
	// pieces are the lengths of the VMM mappings that back the range from
	// moff on, in order, each as one Map made it: SHMEM_UNMAP must name a
	// mapping exactly. mapped is their sum; it is less than length only
	// when the file ended inside the range (the extent is clamped).
	pieces []uint64
	mapped uint64
}

func (x *extent) clamped() bool { return x.mapped < x.length }

// file is a descriptor shared by the extents cut from one setup.
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
	page      uint64
	pastEOF   bool // the channel maps past the end of a file
	ch        Channel
	files     Files

	// nClamped counts the clamped extents, so that the server's check
	// after every size-changing request is one atomic load.
	nClamped atomic.Int64

	mu      sync.Mutex
	extents []extent       // sorted by moff, non-overlapping
	clamped map[uint64]int // node -> its clamped extents
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
	return &Window{size: size, alignment: alignment, page: uint64(os.Getpagesize()), pastEOF: ch.MapsPastEOF(),
		ch: ch, files: files, clamped: map[uint64]int{}}, nil
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

// Count returns the number of VMM mappings.
func (w *Window) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, x := range w.extents {
		n += len(x.pieces)
	}
	return n
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

func fileSize(fd int) (uint64, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err.(syscall.Errno)
	}
	return uint64(st.Size), 0
}

// fit returns how much of length bytes at foff a VMM that cannot map past
// the end of a file of size bytes is asked for: all of it when the file
// covers the range, else the rest of the file when that is whole pages.
func (w *Window) fit(size, foff, length uint64) (uint64, syscall.Errno) {
	switch {
	case foff >= size:
		return 0, ErrUnmappable
	case size-foff >= length:
		return length, 0
	case (size-foff)%w.page != 0 || foff%w.page != 0:
		return 0, ErrUnmappable
	}
	return size - foff, 0
}

// Setup maps length bytes of node's file at foff to window offset moff.
// Whatever was mapped in that range before is replaced, which is how the
// guest upgrades a read-only range to read-write. With a VMM that cannot
// map past the end of a file, only the part of the range the file covers
// is mapped (the rest as the file grows, see Grow), and a range that holds
// a partial last page, or nothing of the file, is refused with
// ErrUnmappable.
func (w *Window) Setup(nodeID, foff, length, flags, moff uint64) syscall.Errno {
	if e := w.check(foff, moff, length); e != 0 {
		return e
	}
	writable := flags&FlagWrite != 0
	fd, e := w.files.MappingFd(nodeID, writable)
	if e != 0 {
		return e
	}
	n := length
	if !w.pastEOF {
		size, e := fileSize(fd)
		if e == 0 {
			n, e = w.fit(size, foff, length)
		}
		if e != 0 {
			unix.Close(fd)
			return e
		}
	}
	f := &file{fd: fd, refs: 1} // the extent's reference
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.removeLocked(moff, length); e != 0 {
		f.put()
		return e
	}
	if err := w.ch.Map(fd, foff, moff, n, writable); err != nil {
		f.put()
		return errnoOf(err)
	}
	w.insertLocked(extent{moff: moff, length: length, foff: foff, file: f, node: nodeID, writable: writable,
		pieces: []uint64{n}, mapped: n})
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

// removeLocked clears a range: every extent touching it is unmapped whole
// (the generic protocol cannot unmap part of a mapping) and what lies
// outside the range is mapped again.
func (w *Window) removeLocked(moff, length uint64) syscall.Errno {
	end := moff + length
	var keep, hit []extent
	for _, x := range w.extents {
		if x.moff < end && moff < x.moff+x.length {
			hit = append(hit, x)
		} else {
			keep = append(keep, x)
		}
	}
	if len(hit) == 0 {
		return 0
	}
	var firstErr error
	for _, x := range hit {
		w.unmapLocked(&x, &firstErr)
		if x.clamped() {
			w.untrack(&x)
		}
	}
	w.extents = keep
	for _, x := range hit {
		// The pieces left of and right of the removed range.
		if x.moff < moff {
			left := extent{moff: x.moff, length: moff - x.moff, foff: x.foff, file: x.file, node: x.node, writable: x.writable}
			w.refillLocked(left, &firstErr)
		}
		if xEnd := x.moff + x.length; xEnd > end {
			right := extent{moff: end, length: xEnd - end, foff: x.foff + (end - x.moff), file: x.file, node: x.node, writable: x.writable}
			w.refillLocked(right, &firstErr)
		}
		x.file.put()
	}
	if firstErr != nil {
		return errnoOf(firstErr)
	}
	return 0
}

// unmapLocked asks the VMM to unmap each piece of x.
func (w *Window) unmapLocked(x *extent, firstErr *error) {
	off := x.moff
	for _, n := range x.pieces {
		if err := w.ch.Unmap(off, n); err != nil && *firstErr == nil {
			*firstErr = err
		}
		off += n
	}
}

// refillLocked maps what a remove left of an extent: all of it, or with a
// VMM that cannot map past the end of a file, the whole pages the file
// still covers (the extent stays clamped, for Grow). A remainder the VMM
// refuses is dropped from the books.
func (w *Window) refillLocked(x extent, firstErr *error) {
	n := x.length
	if !w.pastEOF {
		n = 0
		if size, e := fileSize(x.file.fd); e == 0 && size > x.foff {
			n = min(x.length, (size-x.foff)&^(w.page-1))
		}
	}
	if n > 0 {
		if err := w.ch.Map(x.file.fd, x.foff, x.moff, n, x.writable); err != nil {
			if *firstErr == nil {
				*firstErr = err
			}
			return
		}
		x.pieces, x.mapped = []uint64{n}, n
	}
	x.file.refs++
	w.insertLocked(x)
}

func (w *Window) insertLocked(x extent) {
	if x.clamped() {
		w.track(&x)
	}
	i := sort.Search(len(w.extents), func(i int) bool { return w.extents[i].moff >= x.moff })
	w.extents = append(w.extents, extent{})
	copy(w.extents[i+1:], w.extents[i:])
	w.extents[i] = x
}

func (w *Window) track(x *extent) {
	w.clamped[x.node]++
	w.nClamped.Add(1)
}

func (w *Window) untrack(x *extent) {
	if w.clamped[x.node]--; w.clamped[x.node] <= 0 {
		delete(w.clamped, x.node)
	}
	w.nClamped.Add(-1)
}

// Clamped reports whether some mapping stops short of the guest's range
// because its file ended there: whether Grow and Extending have anything
// to do. It is one atomic load.
func (w *Window) Clamped() bool { return w.nClamped.Load() != 0 }

// Grow maps, for every clamped extent of node, the whole pages its file
// has grown by since. The server calls it after each request that may
// have changed the size of node's file or shows the guest its size, before
// the guest sees the reply: the guest reads its mapping up to the size it
// knows of. A partial last page cannot be mapped; Extending keeps the
// guest from growing a file into one.
func (w *Window) Grow(nodeID uint64) syscall.Errno {
	if w.nClamped.Load() == 0 {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.clamped[nodeID] == 0 {
		return 0
	}
	var firstErr error
	for i := range w.extents {
		x := &w.extents[i]
		if x.node != nodeID || !x.clamped() {
			continue
		}
		size, e := fileSize(x.file.fd)
		if e != 0 {
			if firstErr == nil {
				firstErr = e
			}
			continue
		}
		end := x.foff + x.mapped // page aligned
		if size <= end {
			continue
		}
		add := min(x.length-x.mapped, (size-end)&^(w.page-1))
		if add == 0 {
			continue
		}
		// A new piece after the mapped ones: the part the guest may be
		// reading right now stays mapped throughout.
		if err := w.ch.Map(x.file.fd, end, x.moff+x.mapped, add, x.writable); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		x.pieces = append(x.pieces, add)
		x.mapped += add
		if !x.clamped() {
			w.untrack(x)
		}
	}
	if firstErr != nil {
		return errnoOf(firstErr)
	}
	return 0
}

// Extending is asked before a request that may make node's file end at
// end bytes (a WRITE, a truncate, an fallocate or a copy into it). It
// refuses with ErrUnmappable when a clamped extent of node would then
// hold a partial last page: that page cannot be mapped, and the guest,
// which maps the whole range, would read zeros there.
func (w *Window) Extending(nodeID, end uint64) syscall.Errno {
	if w.nClamped.Load() == 0 || end%w.page == 0 {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.clamped[nodeID] == 0 {
		return 0
	}
	last := end &^ (w.page - 1) // the partial page
	for i := range w.extents {
		x := &w.extents[i]
		if x.node != nodeID || !x.clamped() || last < x.foff+x.mapped || last >= x.foff+x.length {
			continue
		}
		if size, e := fileSize(x.file.fd); e == 0 && size >= end {
			continue // not growing
		}
		return ErrUnmappable
	}
	return 0
}

// InodeDAX reports whether the guest should map nodeID's file when it
// mounted with dax=inode; which files do is the host filesystem's to say
// (Files.InodeDAX).
func (w *Window) InodeDAX(nodeID, parent uint64) bool { return w.files.InodeDAX(nodeID, parent) }

// Reset unmaps everything (DESTROY, a new INIT, a device reset). With
// unmap false the VMM is gone and only the descriptors are released.
func (w *Window) Reset(unmap bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var err error
	for _, x := range w.extents {
		if unmap {
			w.unmapLocked(&x, &err)
		}
		if x.clamped() {
			w.untrack(&x)
		}
		x.file.put()
	}
	w.extents = nil
}

// Mapped returns the VMM mappings, for tests and debugging: window offset,
// length, file offset and writability of each.
func (w *Window) Mapped() [][4]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][4]uint64
	for _, x := range w.extents {
		rw := uint64(0)
		if x.writable {
			rw = 1
		}
		off := uint64(0)
		for _, n := range x.pieces {
			out = append(out, [4]uint64{x.moff + off, n, x.foff + off, rw})
			off += n
		}
	}
	return out
}

// Extent is a window range as the guest mapped it, for tests and
// debugging: Mapped of its Length bytes are backed by the file (less only
// when the file ends inside the range), in Pieces VMM mappings.
type Extent struct {
	Offset, Length, FileOffset uint64
	Mapped                     uint64
	Pieces                     int
	Node                       uint64
}

// Extents returns the books as the guest's ranges.
func (w *Window) Extents() []Extent {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Extent, len(w.extents))
	for i, x := range w.extents {
		out[i] = Extent{Offset: x.moff, Length: x.length, FileOffset: x.foff, Mapped: x.mapped, Pieces: len(x.pieces), Node: x.node}
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
