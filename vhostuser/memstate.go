package vhostuser

import (
	"sync/atomic"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// memState is one generation of the guest memory layout. Workers hold a
// reference while they use it; the control goroutine installs a new one
// without waiting for them, so it keeps serving the front-end even while a
// worker waits on the back-end channel (the VMM may change the memory
// table before it answers a map request). Regions that a new layout drops
// are unmapped when the last holder of the old one lets go.
type memState struct {
	table   *virtqueue.MemoryTable
	retired []*virtqueue.MappedRegion
	refs    atomic.Int64
	done    atomic.Bool
}

func (s *memState) release() {
	if s.refs.Add(-1) == 0 && s.done.CompareAndSwap(false, true) {
		unmapAll(s.retired)
	}
}

// acquireMem returns the current memory layout with a reference, or nil
// before the first memory table.
func (b *Backend) acquireMem() *memState {
	for {
		s := b.mem.Load()
		if s == nil {
			return nil
		}
		s.refs.Add(1)
		if b.mem.Load() == s {
			return s
		}
		// Replaced meanwhile: the reference may have been taken after
		// the count reached zero, so drop it without touching s.
		s.release()
	}
}
