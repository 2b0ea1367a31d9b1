package vhostuser

import (
	"sync/atomic"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// When guest memory is unmapped.
//
// The rule: a mapping is unmapped only when no memory layout (memState)
// that maps it is still held by anyone. It holds by construction, here:
//
//   - every layout holds one count on each region it maps (guestRegion),
//     taken when the layout is built;
//   - a layout gives those counts back, once, when its last holder lets go
//     (memState.release);
//   - a region is unmapped by the release that takes its count to zero
//     (guestRegion.drop), and by nothing else once it is in a layout.
//
// So it does not matter how many layouts were installed and dropped since a
// worker took its reference, nor which change dropped a region: a worker
// holding the first of {A,B} -> {B} -> {} keeps B mapped until it lets go.
// A layout's holders are the control goroutine while it is current, each
// worker serving a chain from it, each chain handed to an assistant, and
// each running ring whose rings were translated in it (vring.bound; an
// idle ring moves to a new layout at once, see vring.rebind).

// guestRegion is a mapped guest memory region and the number of memory
// layouts that map it.
type guestRegion struct {
	*virtqueue.MappedRegion
	layouts atomic.Int32
	mapped  *atomic.Uint64 // the back-end's count of bytes mapped
}

// drop gives back one layout's count and unmaps the region with the last.
func (r *guestRegion) drop() {
	if r.layouts.Add(-1) == 0 {
		r.unmap()
	}
}

// unmap unmaps the region and takes its bytes off the back-end's count.
func (r *guestRegion) unmap() {
	if r.Bytes() == nil {
		return
	}
	size := r.MmapOffset + r.Size
	r.Unmap()
	if r.mapped != nil {
		r.mapped.Add(-size)
	}
}

// memState is one generation of the guest memory layout. Workers hold a
// reference while they use it; the control goroutine installs a new one
// without waiting for them, so it keeps serving the front-end even while a
// worker waits on the back-end channel (the VMM may change the memory
// table before it answers a map request).
type memState struct {
	table   *virtqueue.MemoryTable
	regions []*guestRegion // the table's regions, one count held on each
	refs    atomic.Int64
	done    atomic.Bool
}

// newMemState builds a layout over regions, taking a count on each, with
// one reference: the control goroutine's.
func newMemState(regions []*guestRegion) (*memState, error) {
	mapped := make([]*virtqueue.MappedRegion, len(regions))
	for i, r := range regions {
		mapped[i] = r.MappedRegion
	}
	table, err := virtqueue.NewMemoryTable(mapped)
	if err != nil {
		return nil, err
	}
	s := &memState{table: table, regions: regions}
	for _, r := range regions {
		r.layouts.Add(1)
	}
	s.refs.Store(1)
	return s, nil
}

// release drops a reference; the last one gives back the layout's counts
// on its regions.
func (s *memState) release() {
	if s.refs.Add(-1) == 0 && s.done.CompareAndSwap(false, true) {
		for _, r := range s.regions {
			r.drop()
		}
	}
}

func (s *memState) addRef() { s.refs.Add(1) }

// acquireMem returns the current memory layout with a reference, or nil
// before the first memory table.
func (b *Backend) acquireMem() *memState { return acquire(&b.mem) }

// acquire returns the value *p holds with a reference, or nil. Values
// workers share while the control goroutine may replace them (memory
// layouts, dirty logs) count their users and free themselves, once, when
// the last one lets go.
func acquire[T any, P interface {
	*T
	addRef()
	release()
}](p *atomic.Pointer[T]) P {
	for {
		s := P(p.Load())
		if s == nil {
			return nil
		}
		s.addRef()
		if P(p.Load()) == s {
			return s
		}
		// Replaced meanwhile: the reference may have been taken after
		// the count reached zero, so drop it again; release frees
		// nothing twice.
		s.release()
	}
}
