package vhostuser

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// Deferred replies.
//
// A chain's reply may have to wait for something that can take for ever (a
// lock held by a host process): its worker must not wait with it. A
// DeferringHandler parks such a chain (Parker.Park) and returns; the chain
// then belongs to its Deferred, which holds the memory layout its segments
// point into (see memstate.go) and counts as the ring's, and the reply is
// written and the chain returned later, from any goroutine, by
// Deferred.Complete, under the ring's mu as every completion is.
//
// Nothing waits for a parked chain for ever. Whenever the back-end has to
// have the ring's chains back (GET_VRING_BASE stops the ring, RESET_OWNER,
// RESET_DEVICE and the front-end's disconnect reset it, a new address or
// kick restarts it), it first asks the device to end each parked chain
// (Canceler.Cancel: the device answers it with an error), waits for them,
// and after parkedGrace returns those still parked itself, with nothing
// written. A memory table change waits for nothing (a layout lives as long
// as a chain holds it), but a chain whose layout maps a region the change
// dropped is cancelled all the same, so that the region is not kept mapped
// behind the front-end's back for as long as the wait lasts.
//
// A guest could fill its rings with chains that never complete and starve
// its other requests: a ring parks at most half its size, and a back-end at
// most Options.MaxDeferred; past either, Park refuses and the handler
// answers at once.

// DefaultMaxDeferred is Options.MaxDeferred's default.
const DefaultMaxDeferred = 1024

// parkedGrace is how long a ring that must stop waits for the device to
// complete its cancelled chains before it returns them itself (a variable
// for tests).
var parkedGrace = 5 * time.Second

// DeferringHandler is a Handler that may leave a chain's reply for later.
// The back-end serves a chain with HandleDeferring instead of Handle when
// its handler has it.
type DeferringHandler interface {
	Handler
	// HandleDeferring serves c as Handle does, or parks it with p.Park,
	// p being valid only during the call; then what it returns is
	// ignored, and c is the Deferred's from then on: the back-end
	// neither returns nor reuses it, and the Deferred's Chain stays
	// valid until it completes.
	HandleDeferring(qi int, c *virtqueue.DescriptorChain, p *Parker) uint32
}

// Canceler is the device's side of a parked chain.
type Canceler interface {
	// Cancel asks for the parked chain to be completed soon, with an
	// error reply: the back-end needs the ring's chains back. It is
	// called on the control goroutine, possibly more than once and after
	// Complete; it must not block, and may call Complete itself.
	Cancel()
}

// Parker parks the chain its handler is serving. Each goroutine that runs
// a handler has its own.
type Parker struct {
	h   Handler
	dh  DeferringHandler            // h, if it defers
	own **virtqueue.DescriptorChain // where the goroutine pops chains (nil for an assistant's, handed to it)

	// The chain being served, during HandleDeferring.
	v      *vring
	c      *virtqueue.DescriptorChain
	mem    *memState
	parked bool
}

// newParker returns the Parker of a goroutine that serves chains with h.
func newParker(h Handler) *Parker {
	p := &Parker{h: h}
	p.dh, _ = h.(DeferringHandler)
	return p
}

// handle serves c, a chain of v from layout mem, with the Parker's handler.
// It reports false when the handler parked c.
func (p *Parker) handle(v *vring, c *virtqueue.DescriptorChain, mem *memState) (uint32, bool) {
	if p.dh == nil {
		return p.h.Handle(v.index, c), true
	}
	p.v, p.c, p.mem, p.parked = v, c, mem, false
	n := p.dh.HandleDeferring(v.index, c, p)
	parked := p.parked
	p.v, p.c, p.mem, p.parked = nil, nil, nil, false
	return n, !parked
}

// Park takes the chain being served out of its worker's hands and returns
// its Deferred, which the device completes later; cancel is asked to end
// it when the back-end needs it back. It returns nil, parking nothing,
// when the ring holds half its size in parked chains, the back-end
// Options.MaxDeferred, or the ring is stopping: the handler answers the
// chain at once. A chain is parked at most once.
func (p *Parker) Park(cancel Canceler) *Deferred {
	v := p.v
	if v == nil || p.parked || v.stopping.Load() {
		return nil
	}
	b := v.b
	if n := v.parkedN.Add(1); n > int32(v.num/2) {
		v.parkedN.Add(-1)
		v.noteParkRefused()
		return nil
	}
	if n := b.parkedAll.Add(1); n > int64(b.opts.MaxDeferred) {
		b.parkedAll.Add(-1)
		v.parkedN.Add(-1)
		v.noteParkRefused()
		return nil
	}
	d := &Deferred{v: v, c: p.c, mem: p.mem, cancel: cancel}
	p.mem.addRef()
	v.parkWait.Add(1)
	v.parkMu.Lock()
	if v.parked == nil {
		v.parked = make(map[*Deferred]struct{})
	}
	v.parked[d] = struct{}{}
	v.parkMu.Unlock()
	p.parked = true
	if p.own != nil && *p.own == p.c {
		// The worker pops its next chain into a new one.
		*p.own = virtqueue.NewDescriptorChain(64)
	}
	return d
}

// noteParkRefused logs, the first time and every 1000th, that a chain
// could not be parked.
func (v *vring) noteParkRefused() {
	if n := v.b.parkRefused.Add(1); n == 1 || n%1000 == 0 {
		v.b.log.Warnf("queue %d: a chain could not be deferred (%d parked on the ring, %d on the device; %d refused so far): answered at once", v.index, v.parkedN.Load(), v.b.parkedAll.Load(), n)
	}
}

// Deferred is a parked chain, waiting for its reply.
type Deferred struct {
	v      *vring
	c      *virtqueue.DescriptorChain
	mem    *memState // keeps the chain's memory mapped
	cancel Canceler
	state  atomic.Int32 // deferredParked, then deferredDone
}

const (
	deferredParked int32 = iota
	deferredDone
)

// Chain returns the parked chain: its segments stay valid until Complete.
func (d *Deferred) Chain() *virtqueue.DescriptorChain { return d.c }

// Complete writes the reply with fill, which gets the chain's writable
// segments and returns the bytes it wrote (at most the chain's
// WritableLen), returns the chain to the driver and interrupts it if it
// asked to be. It may be called from any goroutine; only the first
// Complete of a Deferred acts, and it reports whether it did. fill may be
// nil (nothing written). Guest memory may fault: the fault is recovered
// here and breaks the ring, as a fault while serving does.
func (d *Deferred) Complete(fill func(writable [][]byte) uint32) bool {
	if !d.state.CompareAndSwap(deferredParked, deferredDone) {
		return false
	}
	d.finish(fill)
	return true
}

// finish is Complete once the Deferred is claimed. The chain stops
// counting as parked before it is returned: a driver that reuses its
// descriptors at once must find the room its reply made.
func (d *Deferred) finish(fill func(writable [][]byte) uint32) {
	v := d.v
	unparked := false
	defer func() {
		if !unparked {
			v.unpark(d)
		}
		d.mem.release()
		v.parkWait.Done()
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			v.fault(p)
		}
	}()
	n := uint32(0)
	if fill != nil {
		n = uint32(min(uint64(fill(d.c.Writable)), d.c.WritableLen))
	}
	v.unpark(d)
	unparked = true
	v.complete(d.c, d.mem, n, true)
}

// unpark takes d off the ring's parked chains and counts.
func (v *vring) unpark(d *Deferred) {
	v.parkMu.Lock()
	delete(v.parked, d)
	v.parkMu.Unlock()
	v.parkedN.Add(-1)
	v.b.parkedAll.Add(-1)
}

// parkedList returns the ring's parked chains for which keep is true (all
// with nil).
func (v *vring) parkedList(keep func(*Deferred) bool) []*Deferred {
	v.parkMu.Lock()
	defer v.parkMu.Unlock()
	var l []*Deferred
	for d := range v.parked {
		if keep == nil || keep(d) {
			l = append(l, d)
		}
	}
	return l
}

// drainParked has the device end every chain parked on the ring and waits
// for them, at most parkedGrace before it returns those left itself. No
// chain is being served: the ring is stopped.
func (v *vring) drainParked() {
	l := v.parkedList(nil)
	if len(l) == 0 {
		return
	}
	for _, d := range l {
		if d.cancel != nil {
			d.cancel.Cancel()
		}
	}
	done := make(chan struct{})
	go func() {
		v.parkWait.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(parkedGrace):
	}
	left := v.parkedList(nil)
	v.b.log.Errorf("queue %d: %d deferred chains not completed %v after they were cancelled: returned with no reply", v.index, len(left), parkedGrace)
	for _, d := range left {
		if d.state.CompareAndSwap(deferredParked, deferredDone) {
			d.finish(nil)
		}
	}
	<-done
}

// cancelUnmapped asks the device to end the chains parked on the ring
// whose memory layout maps a region not in keep, the regions of the layout
// that replaces it.
func (v *vring) cancelUnmapped(keep map[*guestRegion]bool) {
	stale := map[*memState]bool{}
	l := v.parkedList(func(d *Deferred) bool {
		s, seen := stale[d.mem]
		if !seen {
			for _, r := range d.mem.regions {
				if !keep[r] {
					s = true
					break
				}
			}
			stale[d.mem] = s
		}
		return s
	})
	for _, d := range l {
		if d.cancel != nil {
			d.cancel.Cancel()
		}
	}
}

// parkState is a ring's parked chains (part of vring).
type parkState struct {
	parkMu   sync.Mutex
	parked   map[*Deferred]struct{}
	parkedN  atomic.Int32
	parkWait sync.WaitGroup
}
