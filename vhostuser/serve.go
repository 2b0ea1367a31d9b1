package vhostuser

import (
	"errors"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// notifyBatch bounds how many chains a worker completes before it checks
// whether the driver wants an interrupt. A driver that waits for replies
// to send more requests refills the ring while the rest of a batch is
// served, so telling it early pays; 4 did best of the batch sizes measured
// (see docs/perf.md, section "vhostuser: the wait loop and the
// scheduler"). With EVENT_IDX the driver still decides whether it is
// interrupted.
const notifyBatch = 4

// AssistMin is the least a chain carries to the device (its readable
// part) for an assistant (Options.Assistants) to serve it. Such a chain is
// a long copy, such as a large WRITE: while an assistant copies it, the
// queue's worker serves the chains behind it, on another CPU. A chain with
// none behind it is served where it is.
const AssistMin = 256 << 10

// Serving a ring.
//
// Whoever pops a ring's chains holds its token (vring.owned), so chains are
// popped in order by one goroutine at a time. Without a thread pool the
// ring's worker takes the token whenever it wakes, and serves until the
// ring is empty. With a pool (a shared ring), the ring's worker only waits
// for kicks and sends the ring to the pool (Backend.ready) when the token
// is free. The pool worker that receives it pops one chain and, before
// serving it, passes the ring on through the same channel when more chains
// wait, or else (in a pool of more than one) gives the token up with
// notifications enabled, so that the next chain wakes whichever worker is
// free, however long this one's takes. So a chain stays in the ring until
// a worker is free to serve it, and a pool of one, which keeps the token
// while it serves, serves a busy ring without a single handoff between
// threads. A kick that finds the token taken sets kicked; a holder that
// gives the token up looks at it afterwards, so no kick is lost in
// between.

// shared reports whether the pool serves the ring.
func (v *vring) shared() bool { return v.b.ready != nil && v.index != 0 }

// summon sends the ring to the pool unless a holder has it; that one sees
// the kick when it gives the token up.
func (v *vring) summon() {
	v.kicked.Store(true)
	if v.owned.CompareAndSwap(false, true) {
		v.post()
	}
}

// post sends the ring, with its token, to the pool.
func (v *vring) post() {
	v.inflight.Add(1)
	v.b.ready <- v
}

// serve pops the ring's chains and serves them with h while it holds the
// token, which the caller took together with an in-flight count. It
// returns once it has given the token up or passed it on, and drops the
// count. It serves chains with p's handler. *own is the chain it pops
// into; it is replaced when an assistant takes it or the handler parks it
// (Parker.Park).
func (v *vring) serve(q *virtqueue.Queue, p *Parker, own **virtqueue.DescriptorChain) {
	p.own = own
	// What to give back if guest memory faults (see fault): the token
	// while it is held, and the reference taken for a chain served
	// after the token was passed on.
	holding, extra := true, (*memState)(nil)
	defer func() {
		if r := recover(); r != nil {
			v.fault(r)
			if extra != nil {
				extra.release()
			}
			if holding {
				v.release()
			}
		}
		v.inflight.Done()
	}()
	shared := v.shared()
	assisted := v.b.assist != nil && v.index != 0
	v.kicked.Store(false)
	sinceNotify := 0
	for {
		if v.stopping.Load() || v.broken.Load() {
			v.release()
			return
		}
		if v.held = v.follow(q, v.held); v.held == nil {
			v.release()
			return
		}
		mem, c := v.held, *own
		ok, err := q.Pop(mem.table, c)
		if !ok {
			if err != nil {
				v.guestError(err)
				v.release()
				return
			}
			if !shared {
				v.flush(q)
				sinceNotify = 0
			}
			if v.index != 0 && v.b.opts.Poll > 0 && v.poll(q) {
				continue
			}
			if v.letGo(q) {
				return
			}
			continue
		}
		if err != nil {
			v.guestError(err)
			// A bad head has nothing to return: the driver never
			// made such a chain available.
			if !errors.Is(err, virtqueue.ErrBadHead) {
				v.complete(c, mem, 0, shared)
			}
			continue
		}
		// Only with chains waiting behind it: a driver that sends one
		// request at a time gains nothing from the handoff.
		if assisted && c.ReadableLen >= AssistMin && q.Pending() && v.hand(c, mem) {
			*own = v.chain()
			continue
		}
		if shared {
			// Let the pool take the ring while c is served, unless
			// a pool of one would only hand it to itself.
			more := q.Pending()
			if !more && v.b.opts.ThreadPoolSize == 1 {
				if n, ok := p.handle(v, c, mem); ok {
					v.complete(c, mem, n, true)
				}
				continue
			}
			mem.addRef()
			extra = mem
			if more || !v.letGo(q) {
				v.post()
			}
			holding = false
			if n, ok := p.handle(v, c, mem); ok {
				v.complete(c, mem, n, true)
			}
			extra = nil
			mem.release()
			return
		}
		if n, ok := p.handle(v, c, mem); ok {
			v.complete(c, mem, n, false)
		}
		if sinceNotify++; sinceNotify >= notifyBatch {
			v.flush(q)
			sinceNotify = 0
		}
	}
}

// letGo gives the token up once the ring is empty with notifications
// enabled. It reports false, keeping the token, when chains arrived
// meanwhile.
func (v *vring) letGo(q *virtqueue.Queue) bool {
	pending := q.EnableNotification()
	if v.b.dirty.on.Load() {
		v.logRing()
	}
	if pending {
		return false
	}
	v.release()
	if v.kicked.Load() && v.owned.CompareAndSwap(false, true) {
		v.post()
	}
	return true
}

// release gives the token up, with the memory reference it holds. A
// memory change that came while the token was held found the ring taken
// (rebind); it is caught up with here.
func (v *vring) release() {
	if v.held != nil {
		v.held.release()
		v.held = nil
	}
	v.owned.Store(false)
	if cur := v.b.mem.Load(); cur != nil && cur != v.bound.Load() && !v.stopping.Load() {
		if mem := v.b.acquireMem(); mem != nil {
			v.rebind(v.q, mem)
			mem.release()
		}
	}
}

// hand sends c to an idle assistant, which completes it and drops the
// memory reference the chain holds, and reports whether one took it.
func (v *vring) hand(c *virtqueue.DescriptorChain, mem *memState) bool {
	// The references are taken first: the assistant may finish before
	// the send returns.
	mem.addRef()
	v.inflight.Add(1)
	select {
	case v.b.assist <- work{v: v, c: c, mem: mem}:
		return true
	default:
		mem.release()
		v.inflight.Done()
		return false
	}
}

func (v *vring) chain() *virtqueue.DescriptorChain {
	select {
	case c := <-v.free:
		return c
	default:
		return virtqueue.NewDescriptorChain(64)
	}
}

// complete returns c to the driver; with notify it also interrupts the
// driver if it asked for it. The caller holds a reference to mem, the
// memory layout the chain came from.
func (v *vring) complete(c *virtqueue.DescriptorChain, mem *memState, n uint32, notify bool) {
	v.pushUsed(c.Head, n, notify)
	if v.b.dirty.on.Load() {
		v.logWrites(c, mem, n)
	}
}

// pushUsed is complete's part under mu, unlocked in a defer: the used
// ring may fault (see fault).
func (v *vring) pushUsed(head uint16, n uint32, notify bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.q != nil && !v.broken.Load() {
		v.q.PushUsed(head, n)
		if notify && v.q.NeedsNotify() {
			v.signalLocked()
		}
	}
}

// Guest memory that faults.
//
// Guest memory is the front-end's shared memory, and the front-end may
// shrink the file behind it after the memory table was checked: touching
// the part past the new end raises SIGBUS, which by default kills the
// daemon. So every goroutine that touches guest memory (ring workers, pool
// workers, assistants; the dirty log is written by them too) runs with
// debug.SetPanicOnFault: the fault becomes a panic, which serve (or the
// assistant) recovers. The ring is then marked broken, as one whose memory
// went away, and nothing touches its rings again until the front-end
// starts it anew; the daemon and the other rings serve on. Whatever holds
// a lock around guest memory accesses lets it go in a defer (pushUsed,
// flush, the dirty log's references in logWrites).

// memoryFault is the panic value of a faulting access under
// debug.SetPanicOnFault.
type memoryFault interface {
	error
	Addr() uintptr
}

// fault handles the panic p recovered while serving the ring: a memory
// fault marks the ring broken, logged once; anything else is panicked
// again.
func (v *vring) fault(p any) {
	f, ok := p.(memoryFault)
	if !ok {
		panic(p)
	}
	v.mu.Lock()
	first := !v.broken.Swap(true)
	v.mu.Unlock()
	if first {
		v.b.log.Errorf("queue %d: guest memory fault at %#x (%v); the ring is stopped until the front-end starts it again", v.index, f.Addr(), f)
	}
}

func (v *vring) recycle(c *virtqueue.DescriptorChain) {
	if v.free == nil {
		return
	}
	select {
	case v.free <- c:
	default:
	}
}

// flush interrupts the driver if it wants to hear of the entries used so
// far. The caller holds a memory reference.
func (v *vring) flush(q *virtqueue.Queue) {
	v.mu.Lock()
	defer v.mu.Unlock() // the available ring may fault (see fault)
	if q.NeedsNotify() {
		v.signalLocked()
	}
}

func (v *vring) signalLocked() {
	if v.call >= 0 {
		// The call descriptor is a non-blocking eventfd
		// (notifierFd): the write never blocks, so the scheduler's
		// system-call bookkeeping is skipped. When its counter is
		// full (EAGAIN) the driver has an interrupt pending
		// anyway, and the write is not retried.
		syscall.RawSyscall(unix.SYS_WRITE, uintptr(v.call), uintptr(unsafe.Pointer(&eventOne[0])), 8)
	}
}

func (v *vring) guestError(err error) {
	n := v.guestErr.Add(1)
	if n <= 10 || n%1000 == 0 {
		v.b.log.Warnf("queue %d: bad descriptor chain from the guest (%d so far): %v", v.index, n, err)
	}
}
