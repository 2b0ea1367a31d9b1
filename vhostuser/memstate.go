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
