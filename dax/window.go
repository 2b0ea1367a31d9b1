// Package dax keeps the books of the DAX window: which range of which file
// the VMM has mapped at which offset of the virtio-fs shared memory region,
// and it turns the guest's FUSE_SETUPMAPPING and FUSE_REMOVEMAPPING into
// map and unmap requests to the VMM.
//
// It sits between the FUSE server, which decodes the guest's requests, and
// the vhost-user back-end channel, which carries the requests to the VMM
// (Channel). Files come from the host filesystem layer (Files). Every
// offset and length the guest sends is checked against the window size and
// alignment here, before anything is asked of the VMM.
//
// The guest may send any sequence of requests, so the books are bounded
// and cost the same whatever it does: they are a sorted slice searched in
// O(log n) and spliced in place (no request allocates in proportion to the
// mappings held, and SETUPMAPPING and REMOVEMAPPING allocate nothing in
// steady state); a node's mappings share one descriptor of its file per
// access mode, held while any of them needs it; and past a number of
// mappings, of distinct files (DefaultMaxMappings, DefaultMaxNodes), or of
// VMM mappings (twice the mappings: Grow adds pieces) a request is refused
// with ENOSPC and the operator told, at most once per logPeriod.
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
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
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
	// ReadsNeedWritableFd reports whether the VMM maps even a read range
	// from a read-write descriptor only (QEMU 11.1's SHMEM_MAP). Then a
	// read mapping is given one when the file can be opened so, and the
	// host cannot exec a mapped binary (ETXTBSY) while it is mapped; a
	// VMM that maps with the range's own protection (the legacy FS_MAP
	// transports) gets read-only descriptors for reads.
	ReadsNeedWritableFd() bool
}

// Files opens files for mapping.
type Files interface {
	// MappingFd returns a new descriptor of the regular file behind
	// nodeID, opened for reading, and for writing too when writable. The
	// window owns and closes it. The window asks again only when it holds
	// no descriptor of the node for that access: it keeps one for all of
	// the node's mappings.
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

// ErrFull is what a request gets that would take the books past their
// bounds (SetLimits): more mappings, or mappings of more distinct files,
// than the window keeps.
const ErrFull = syscall.ENOSPC

// ErrStale is what a SETUPMAPPING gets whose session ended (DESTROY, a new
// INIT, a device reset) while its file was being opened: nothing of it is
// left in the window.
const ErrStale = syscall.EIO

// Bounds of the books when SetLimits does not say otherwise. A window has
// room for size/alignment mappings; Linux maps 2 MiB at a time (linuxRange),
// so a Linux guest never needs more than size/linuxRange mappings, nor more
// distinct files, and that many are always allowed.
const (
	// DefaultMaxMappings bounds the mappings of a window with room for
	// more (at 4 KiB, of a window of more than 256 MiB).
	DefaultMaxMappings = 1 << 16
	// DefaultMaxNodes bounds the distinct files mapped at once in a
	// window of up to 2 GiB (never more than its mappings); a larger one
	// allows one per 2 MiB.
	DefaultMaxNodes = 1024

	linuxRange = 2 << 20
)

// logPeriod is how often a kind of warning the guest can cause reaches
// the log: the first at once, then one per period at most, with the count
// of those held back.
const logPeriod = 10 * time.Second

// node is a file the window maps: the descriptors its mappings share, one
// per access (read-only, read-write), each open while an extent uses it.
type node struct {
	id   uint64
	fd   [2]int // by access (see access); -1 when not open
	refs [2]int // extents (and setups under way) using fd[i]
	// clamp holds the window offsets of the node's clamped extents, so
	// that Grow and Extending look at those only.
	clamp []uint64
}

// access is the index of a mapping's descriptor in node.fd.
func access(writable bool) int {
	if writable {
		return 1
	}
	return 0
}

// extent is a window range the guest mapped with one FUSE_SETUPMAPPING (or
// what a partial remove left of one).
type extent struct {
	moff, length uint64 // the range as the guest sees it
	foff         uint64
	node         *node
	writable     bool
	// first and more are the lengths of the VMM mappings that back the
	// range from moff on, in order, each as one Map made it: SHMEM_UNMAP
	// must name a mapping exactly. first is 0 while nothing is mapped;
	// more holds what Grow added after it. mapped is their sum; it is
	// less than length only when the file ended inside the range (the
	// extent is clamped).
	first  uint64
	more   []uint64
	mapped uint64
	ci     int // a clamped extent's index in node.clamp
}

func (x *extent) clamped() bool { return x.mapped < x.length }
func (x *extent) end() uint64   { return x.moff + x.length }
func (x *extent) fd() int       { return x.node.fd[access(x.writable)] }

// pieces returns the number of VMM mappings behind x.
func (x *extent) pieces() int {
	if x.first == 0 {
		return 0
	}
	return 1 + len(x.more)
}

// Window is the DAX window of one device.
type Window struct {
	size      uint64
	alignment uint64
	page      uint64
	pastEOF   bool // the channel maps past the end of a file
	rwReads   bool // the channel maps reads from read-write descriptors only
	ch        Channel
	files     Files

	// nClamped counts the clamped extents, so that the server's check
	// after every size-changing request is one atomic load.
	nClamped atomic.Int64

	mu sync.Mutex
	// epoch counts the Resets: a Setup installs nothing if a Reset passed
	// since the epoch it was given (SetupIn) or it opened its file in.
	// Written under mu; read without it by Epoch.
	epoch   atomic.Uint64
	extents []extent // sorted by moff, non-overlapping
	nodes   map[uint64]*node
	pieces  int // VMM mappings
	maxMaps int
	maxNode int

	log     logrus.FieldLogger
	now     func() time.Time
	full    limiter // requests refused for the bounds
	refused limiter // maps and unmaps the VMM refused
}

// NewWindow returns the books of a window of size bytes whose mappings
// must be aligned to alignment (a power of two, at most 2 MiB). An
// alignment below the host's page size is raised to it: the VMM can map
// whole pages only.
func NewWindow(size, alignment uint64, ch Channel, files Files) (*Window, error) {
	if alignment == 0 || alignment&(alignment-1) != 0 || alignment > 2<<20 {
		return nil, fmt.Errorf("DAX alignment %d is not a power of two up to 2 MiB", alignment)
	}
	page := uint64(os.Getpagesize())
	alignment = max(alignment, page)
	if size == 0 || size%alignment != 0 {
		return nil, fmt.Errorf("DAX window size %d is not a non-zero multiple of %d", size, alignment)
	}
	w := &Window{size: size, alignment: alignment, page: page, pastEOF: ch.MapsPastEOF(), rwReads: ch.ReadsNeedWritableFd(),
		ch: ch, files: files, nodes: map[uint64]*node{}, log: logrus.StandardLogger(), now: time.Now}
	w.maxMaps, w.maxNode = defaultLimits(size, alignment)
	return w, nil
}

// defaultLimits returns the bounds of the books of a window (see
// DefaultMaxMappings and DefaultMaxNodes).
func defaultLimits(size, alignment uint64) (mappings, nodes int) {
	ranges := size / linuxRange
	m := max(min(size/alignment, DefaultMaxMappings), ranges)
	n := min(m, max(DefaultMaxNodes, ranges))
	return int(m), int(n)
}

// SetLimits bounds the books: at most mappings guest mappings, of at most
// nodes distinct files (each of which holds up to two descriptors, one
// read-only and one read-write). A request past them gets ErrFull. Zero
// or less keeps a bound's default. Mappings already held stay.
func (w *Window) SetLimits(mappings, nodes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	dm, dn := defaultLimits(w.size, w.alignment)
	w.maxMaps, w.maxNode = dm, dn
	if mappings > 0 {
		w.maxMaps = mappings
	}
	if nodes > 0 {
		w.maxNode = nodes
	}
}

// Limits returns the bounds of the books (see SetLimits).
func (w *Window) Limits() (mappings, nodes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxMaps, w.maxNode
}

// SetLog sets where the window's warnings go (the standard logger
// otherwise): the VMM refusing a map or unmap, and requests refused for
// the bounds. Each kind is logged at most once per logPeriod.
func (w *Window) SetLog(l logrus.FieldLogger) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log = l
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
	return w.pieces
}

// Descriptors returns the number of descriptors the window holds.
func (w *Window) Descriptors() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, f := range w.nodes {
		for _, fd := range f.fd {
			if fd >= 0 {
				n++
			}
		}
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
//
// The node's file is opened (Files.MappingFd) only when the window holds
// no descriptor of it for the access asked, and then without the lock, so
// that the other queues' requests do not wait for the host filesystem; a
// Reset meanwhile makes the setup fail with ErrStale.
func (w *Window) Setup(nodeID, foff, length, flags, moff uint64) syscall.Errno {
	return w.SetupIn(w.Epoch(), nodeID, foff, length, flags, moff)
}

// Epoch counts the window's Resets (see SetupIn).
func (w *Window) Epoch() uint64 { return w.epoch.Load() }

// SetupIn is Setup for a request of the session that was up in epoch (an
// earlier Epoch): if a Reset has come since, it maps nothing and returns
// ErrStale, so that a SETUPMAPPING still under way when its session ended
// leaves nothing to the next session.
func (w *Window) SetupIn(epoch, nodeID, foff, length, flags, moff uint64) syscall.Errno {
	if e := w.check(foff, moff, length); e != 0 {
		return e
	}
	writable := flags&FlagWrite != 0
	e, done := w.setupHeld(epoch, nodeID, foff, length, moff, writable)
	if done {
		return e
	}
	fd, e := w.mappingFd(nodeID, writable)
	if e != 0 {
		return e
	}
	if fd < 0 {
		return syscall.EIO
	}
	return w.setupOpened(nodeID, foff, length, moff, writable, fd, epoch)
}

// mappingFd opens nodeID's file for a mapping, writable or not, as the
// VMM needs it (Channel.ReadsNeedWritableFd).
func (w *Window) mappingFd(nodeID uint64, writable bool) (int, syscall.Errno) {
	if !writable && w.rwReads {
		if fd, e := w.files.MappingFd(nodeID, true); e == 0 {
			return fd, 0
		}
	}
	return w.files.MappingFd(nodeID, writable)
}

// setupHeld serves a Setup of epoch with the node's descriptor the window
// holds; without one, it returns done false.
func (w *Window) setupHeld(epoch, nodeID, foff, length, moff uint64, writable bool) (e syscall.Errno, done bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.nodes[nodeID]
	switch {
	case w.epoch.Load() != epoch:
		return ErrStale, true
	case n != nil && n.fd[access(writable)] >= 0:
		return w.setupLocked(n, foff, length, moff, writable), true
	case n == nil && len(w.nodes) >= w.maxNode:
		w.warnFull("distinct files", w.maxNode)
		return ErrFull, true
	}
	return 0, false
}

// setupOpened serves a Setup with the descriptor fd it opened in epoch.
func (w *Window) setupOpened(nodeID, foff, length, moff uint64, writable bool, fd int, epoch uint64) syscall.Errno {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.epoch.Load() != epoch {
		// The session ended while the file was opened: the request
		// belongs to it, and the next session must not inherit its
		// mapping.
		unix.Close(fd)
		return ErrStale
	}
	k := access(writable)
	n := w.nodes[nodeID]
	if n == nil {
		if len(w.nodes) >= w.maxNode {
			unix.Close(fd)
			w.warnFull("distinct files", w.maxNode)
			return ErrFull
		}
		n = w.newNode(nodeID)
	}
	if n.fd[k] < 0 {
		n.fd[k] = fd
	} else {
		// Another request of the node opened one meanwhile.
		unix.Close(fd)
	}
	return w.setupLocked(n, foff, length, moff, writable)
}

func (w *Window) newNode(id uint64) *node {
	n := &node{id: id, fd: [2]int{-1, -1}}
	w.nodes[id] = n
	return n
}

// release closes the node's descriptors no extent uses any more, and
// forgets the node when none is left.
func (w *Window) release(n *node) {
	for k := range n.fd {
		if n.refs[k] == 0 && n.fd[k] >= 0 {
			unix.Close(n.fd[k])
			n.fd[k] = -1
		}
	}
	if n.fd[0] < 0 && n.fd[1] < 0 {
		delete(w.nodes, n.id)
	}
}

// setupLocked maps the range with n's descriptor for the access, which is
// open; whatever else happens, a descriptor left unused is closed.
func (w *Window) setupLocked(n *node, foff, length, moff uint64, writable bool) syscall.Errno {
	k := access(writable)
	// The setup holds the descriptor while it removes what it replaces,
	// which may be the node's last other mapping.
	n.refs[k]++
	e := w.mapLocked(n, foff, length, moff, writable)
	if e != 0 {
		n.refs[k]--
		w.release(n)
	}
	return e
}

func (w *Window) mapLocked(n *node, foff, length, moff uint64, writable bool) syscall.Errno {
	fd := n.fd[access(writable)]
	m := length
	if !w.pastEOF {
		size, e := fileSize(fd)
		if e == 0 {
			m, e = w.fit(size, foff, length)
		}
		if e != 0 {
			return e
		}
	}
	end := moff + length
	i, j := w.span(moff, end)
	if after := len(w.extents) - (j - i) + w.leftovers(i, j, moff, end) + 1; after > w.maxMaps {
		w.warnFull("mappings", w.maxMaps)
		return ErrFull
	}
	if e := w.removeSpan(i, j, moff, end); e != 0 {
		return e
	}
	if err := w.ch.Map(fd, foff, moff, m, writable); err != nil {
		w.warnRefused("map", moff, m, err)
		return errnoOf(err)
	}
	i = w.search(moff)
	w.extents = slices.Insert(w.extents, i, extent{moff: moff, length: length, foff: foff, node: n, writable: writable,
		first: m, mapped: m})
	w.pieces++
	if w.extents[i].clamped() {
		w.track(&w.extents[i])
	}
	return 0
}

// search returns the index of the first extent that ends after off.
func (w *Window) search(off uint64) int {
	lo, hi := 0, len(w.extents)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if w.extents[h].end() <= off {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return lo
}

// span returns the extents [i, j) that meet [moff, end).
func (w *Window) span(moff, end uint64) (i, j int) {
	i = w.search(moff)
	lo, hi := i, len(w.extents)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if w.extents[h].moff < end {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return i, lo
}

// find returns the index of the extent at moff, or -1.
func (w *Window) find(moff uint64) int {
	if i := w.search(moff); i < len(w.extents) && w.extents[i].moff == moff {
		return i
	}
	return -1
}

// leftovers returns how many pieces of the extents [i, j) lie outside
// [moff, end): what a remove of that range leaves of them.
func (w *Window) leftovers(i, j int, moff, end uint64) int {
	if i == j {
		return 0
	}
	n := 0
	if w.extents[i].moff < moff {
		n++
	}
	if w.extents[j-1].end() > end {
		n++
	}
	return n
}

// Remove unmaps [moff, moff+length), which must be aligned as a mapping
// is. Parts of larger mappings outside the range stay mapped.
func (w *Window) Remove(moff, length uint64) syscall.Errno {
	a := w.alignment - 1
	if length == 0 || moff&a != 0 || length&a != 0 || moff >= w.size || length > w.size-moff {
		return syscall.EINVAL
	}
	end := moff + length
	w.mu.Lock()
	defer w.mu.Unlock()
	i, j := w.span(moff, end)
	if after := len(w.extents) - (j - i) + w.leftovers(i, j, moff, end); after > len(w.extents) && after > w.maxMaps {
		// Cutting a hole in a mapping leaves two.
		w.warnFull("mappings", w.maxMaps)
		return ErrFull
	}
	return w.removeSpan(i, j, moff, end)
}

// removeSpan clears [moff, end) of the extents [i, j) that meet it: each
// is unmapped whole (the generic protocol cannot unmap part of a mapping)
// and what lies outside the range is mapped again, in place of them.
func (w *Window) removeSpan(i, j int, moff, end uint64) syscall.Errno {
	if i == j {
		return 0
	}
	var rest [2]extent
	nr := 0
	if x := &w.extents[i]; x.moff < moff {
		rest[nr] = extent{moff: x.moff, length: moff - x.moff, foff: x.foff, node: x.node, writable: x.writable}
		nr++
	}
	if x := &w.extents[j-1]; x.end() > end {
		rest[nr] = extent{moff: end, length: x.end() - end, foff: x.foff + (end - x.moff), node: x.node, writable: x.writable}
		nr++
	}
	// What is left takes its references first: the descriptor must stay
	// open to map it again.
	for r := range rest[:nr] {
		rest[r].node.refs[access(rest[r].writable)]++
	}
	var firstErr error
	for k := i; k < j; k++ {
		x := &w.extents[k]
		w.unmapLocked(x, &firstErr)
		if x.clamped() {
			w.untrack(x)
		}
		x.node.refs[access(x.writable)]--
		w.release(x.node)
	}
	kept := 0
	for r := range rest[:nr] {
		x := rest[r]
		if w.refillLocked(&x, &firstErr) {
			rest[kept] = x
			kept++
		} else {
			x.node.refs[access(x.writable)]--
			w.release(x.node)
		}
	}
	w.extents = slices.Replace(w.extents, i, j, rest[:kept]...)
	for k := i; k < i+kept; k++ {
		if x := &w.extents[k]; x.clamped() {
			w.track(x)
		}
	}
	if firstErr != nil {
		return errnoOf(firstErr)
	}
	return 0
}

// unmapLocked asks the VMM to unmap each piece of x.
func (w *Window) unmapLocked(x *extent, firstErr *error) {
	w.pieces -= x.pieces()
	if x.first == 0 {
		return
	}
	w.unmapOne(x.moff, x.first, firstErr)
	off := x.moff + x.first
	for _, n := range x.more {
		w.unmapOne(off, n, firstErr)
		off += n
	}
}

func (w *Window) unmapOne(off, n uint64, firstErr *error) {
	if err := w.ch.Unmap(off, n); err != nil {
		w.warnRefused("unmap", off, n, err)
		if *firstErr == nil {
			*firstErr = err
		}
	}
}

// refillLocked maps what a remove left of an extent: all of it, or with a
// VMM that cannot map past the end of a file, the whole pages the file
// still covers (the extent stays clamped, for Grow). It reports false
// when the VMM refused: the remainder is then dropped from the books.
func (w *Window) refillLocked(x *extent, firstErr *error) bool {
	n := x.length
	if !w.pastEOF {
		n = 0
		if size, e := fileSize(x.fd()); e == 0 && size > x.foff {
			n = min(x.length, (size-x.foff)&^(w.page-1))
		}
	}
	if n > 0 {
		if err := w.ch.Map(x.fd(), x.foff, x.moff, n, x.writable); err != nil {
			w.warnRefused("map", x.moff, n, err)
			if *firstErr == nil {
				*firstErr = err
			}
			return false
		}
		x.first, x.mapped = n, n
		w.pieces++
	}
	return true
}

func (w *Window) track(x *extent) {
	x.ci = len(x.node.clamp)
	x.node.clamp = append(x.node.clamp, x.moff)
	w.nClamped.Add(1)
}

// untrack drops x, which is in the books, from its node's clamped
// extents: the last of them takes its place.
func (w *Window) untrack(x *extent) {
	c := x.node.clamp
	last := len(c) - 1
	if x.ci != last {
		c[x.ci] = c[last]
		if i := w.find(c[last]); i >= 0 {
			w.extents[i].ci = x.ci
		}
	}
	x.node.clamp = c[:last]
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
	n := w.nodes[nodeID]
	if n == nil || len(n.clamp) == 0 {
		return 0
	}
	size, e := w.nodeSize(n)
	if e != 0 {
		return e
	}
	var firstErr error
	for c := 0; c < len(n.clamp); {
		i := w.find(n.clamp[c])
		if i < 0 {
			c++ // cannot be: the books track what they hold
			continue
		}
		x := &w.extents[i]
		end := x.foff + x.mapped // page aligned
		if size <= end {
			c++
			continue
		}
		add := min(x.length-x.mapped, (size-end)&^(w.page-1))
		if add == 0 {
			c++
			continue
		}
		if w.pieces >= 2*w.maxMaps {
			// Each piece is a VMM mapping: a guest that grows files
			// a page at a time under many clamped mappings would make
			// the VMM hold one per page. The mapping stays clamped
			// (Extending keeps refusing what it cannot map).
			w.warnFull("VMM mappings", 2*w.maxMaps)
			if firstErr == nil {
				firstErr = ErrFull
			}
			break
		}
		// A new piece after the mapped ones: the part the guest may be
		// reading right now stays mapped throughout.
		if err := w.ch.Map(x.fd(), end, x.moff+x.mapped, add, x.writable); err != nil {
			w.warnRefused("map", x.moff+x.mapped, add, err)
			if firstErr == nil {
				firstErr = err
			}
			c++
			continue
		}
		if x.first == 0 {
			x.first = add
		} else {
			x.more = append(x.more, add)
		}
		x.mapped += add
		w.pieces++
		if !x.clamped() {
			w.untrack(x) // n.clamp[c] is now another extent's
			continue
		}
		c++
	}
	if firstErr != nil {
		return errnoOf(firstErr)
	}
	return 0
}

// nodeSize returns the size of n's file, through either descriptor.
func (w *Window) nodeSize(n *node) (uint64, syscall.Errno) {
	fd := n.fd[0]
	if fd < 0 {
		fd = n.fd[1]
	}
	return fileSize(fd)
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
	n := w.nodes[nodeID]
	if n == nil || len(n.clamp) == 0 {
		return 0
	}
	last := end &^ (w.page - 1) // the partial page
	for _, moff := range n.clamp {
		i := w.find(moff)
		if i < 0 {
			continue
		}
		x := &w.extents[i]
		if last < x.foff+x.mapped || last >= x.foff+x.length {
			continue
		}
		if size, e := fileSize(x.fd()); e == 0 && size >= end {
			return 0 // not growing
		}
		return ErrUnmappable
	}
	return 0
}

// InodeDAX reports whether the guest should map nodeID's file when it
// mounted with dax=inode; which files do is the host filesystem's to say
// (Files.InodeDAX).
func (w *Window) InodeDAX(nodeID, parent uint64) bool { return w.files.InodeDAX(nodeID, parent) }

// Reset unmaps everything (DESTROY, a new INIT, a device reset) and closes
// every descriptor; a Setup that began before it installs nothing after
// it. With unmap false the VMM is gone and only the descriptors are
// released.
func (w *Window) Reset(unmap bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.epoch.Add(1)
	var err error
	for i := range w.extents {
		if x := &w.extents[i]; unmap {
			w.unmapLocked(x, &err)
		}
	}
	for _, n := range w.nodes {
		n.refs = [2]int{}
		w.release(n) // closes both descriptors and forgets the node
	}
	clear(w.extents)
	w.extents = w.extents[:0]
	if cap(w.extents) > 1024 {
		w.extents = nil // a session's worth of books is not kept
	}
	w.pieces = 0
	w.nClamped.Store(0)
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
		if x.first == 0 {
			continue
		}
		out = append(out, [4]uint64{x.moff, x.first, x.foff, rw})
		off := x.first
		for _, n := range x.more {
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
	Writable                   bool
}

// Extents returns the books as the guest's ranges.
func (w *Window) Extents() []Extent {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Extent, len(w.extents))
	for i, x := range w.extents {
		out[i] = Extent{Offset: x.moff, Length: x.length, FileOffset: x.foff, Mapped: x.mapped, Pieces: x.pieces(),
			Node: x.node.id, Writable: x.writable}
	}
	return out
}

// limiter lets the first warning of a kind through, then one per
// logPeriod at most, with the number held back since the last.
type limiter struct {
	next time.Time
	held int
}

// allow reports whether to log at now, and how many were held back.
func (l *limiter) allow(now time.Time) (bool, int) {
	if now.Before(l.next) {
		l.held++
		return false, 0
	}
	held := l.held
	l.held, l.next = 0, now.Add(logPeriod)
	return true, held
}

// warnFull tells the operator that a request was refused for a bound.
func (w *Window) warnFull(what string, limit int) {
	if ok, held := w.full.allow(w.now()); ok {
		w.log.Warnf("DAX: a mapping refused with ENOSPC: the window holds the most %s it keeps (%d); %d more refused since the last such line", what, limit, held)
	}
}

// warnRefused tells the operator that the VMM refused a request.
func (w *Window) warnRefused(what string, off, n uint64, err error) {
	if ok, held := w.refused.allow(w.now()); ok {
		w.log.Warnf("DAX: the VMM refused to %s %d bytes at window offset %#x: %v; %d more refusals since the last such line", what, n, off, err, held)
	}
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
