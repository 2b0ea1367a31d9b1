package frontend

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// Request is one reusable descriptor-chain submission: the buffers of a
// chain (device-readable first), the completion, and the scratch state
// (indirect table, completion channel, timer) that lets it be submitted
// again and again without allocating. A Request is used by one goroutine
// at a time.
type Request struct {
	// Bufs are the chain's buffers, the first Readable of them
	// device-readable, the rest device-writable.
	Bufs     []virtqueue.Buffer
	Readable int
	// Direct forces a direct chain even when indirect descriptors are
	// negotiated.
	Direct bool

	// Head is the chain's head descriptor once submitted.
	Head uint16
	// UsedLen is the length the device reported, valid after Wait.
	UsedLen uint32

	f        *Frontend
	table    uint64 // indirect table, in region 0
	tableCap int    // descriptors it holds
	done     chan struct{}
	timer    *time.Timer
	inflight bool // guarded by the queue's mu
	q        *Queue
	err      error // set by the reaper before done

	// The chain last written into the indirect table, which an Owner
	// does not write again when it is unchanged.
	tableBufs     []virtqueue.Buffer
	tableReadable int
}

// NewRequest returns a Request for this front-end's queues.
func (f *Frontend) NewRequest() *Request {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &Request{f: f, done: make(chan struct{}, 1), timer: t}
}

// Release frees the request's guest memory (its indirect table). The
// request must not be in flight.
func (r *Request) Release() {
	if r.tableCap > 0 {
		r.f.Mem.Free(r.table, uint64(r.tableCap)*16)
		r.tableCap = 0
		r.tableBufs = r.tableBufs[:0]
	}
}

func (r *Request) writableLen() uint64 {
	var n uint64
	for _, b := range r.Bufs[r.Readable:] {
		n += uint64(b.Len)
	}
	return n
}

// UsedElem is one used ring entry that matched no submitted request.
type UsedElem struct {
	Head uint16
	Len  uint32
}

// QueueStats count a queue's traffic.
type QueueStats struct {
	Submitted  uint64 // chains made available
	Completed  uint64 // used entries reaped
	Kicks      uint64 // notifications sent to the device
	Interrupts uint64 // call eventfd wake-ups
}

// Queue is one virtqueue driven from the driver side. Submit and Wait may
// be called from many goroutines; a reaper goroutine collects used entries
// (woken by the call eventfd, or polling) and completes the matching
// Requests by chain head.
type Queue struct {
	f     *Frontend
	index int

	mu      sync.Mutex
	space   *sync.Cond // signalled when descriptors are freed or the queue closes
	d       *virtqueue.Driver
	ring    uint64 // guest address of the ring
	waiters []*Request
	checked uint16 // avail index at the last kick decision
	strays  []UsedElem
	closed  bool
	started bool
	owned   bool // an Owner drives the queue; the reaper is stopped

	kick   int
	call   *os.File // nonblocking eventfd, read through the poller
	callFd int
	errFd  int
	reaped chan struct{}

	submitted, completed, kicks, interrupts atomic.Uint64
}

func newQueue(f *Frontend, index int, size uint16, eventIdx bool) (*Queue, error) {
	q := &Queue{f: f, index: index, kick: -1, callFd: -1, errFd: -1, waiters: make([]*Request, size)}
	q.space = sync.NewCond(&q.mu)
	ring, err := f.Mem.AllocIn(0, virtqueue.RingBytes(size)+8)
	if err != nil {
		return nil, fmt.Errorf("frontend: queue %d ring: %w", index, err)
	}
	q.ring = ring
	low := f.Mem.Regions()[0]
	mem, _ := f.Mem.Bytes(low.GuestAddr, low.Size)
	q.d = virtqueue.NewDriver(mem, low.GuestAddr, ring, size, eventIdx)
	for _, p := range []*int{&q.kick, &q.callFd, &q.errFd} {
		if *p, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			q.closeFds()
			return nil, fmt.Errorf("frontend: queue %d eventfd: %w", index, err)
		}
	}
	q.call = os.NewFile(uintptr(q.callFd), fmt.Sprintf("call%d", index))
	return q, nil
}

func (q *Queue) closeFds() {
	if q.kick >= 0 {
		unix.Close(q.kick)
		q.kick = -1
	}
	if q.call != nil {
		q.call.Close()
		q.call, q.callFd = nil, -1
	} else if q.callFd >= 0 {
		unix.Close(q.callFd)
		q.callFd = -1
	}
	if q.errFd >= 0 {
		unix.Close(q.errFd)
		q.errFd = -1
	}
}

// Index returns the queue index (0 is the high-priority queue).
func (q *Queue) Index() int { return q.index }

// Size returns the queue size.
func (q *Queue) Size() uint16 { return q.d.Size() }

// Stats returns the queue's counters.
func (q *Queue) Stats() QueueStats {
	return QueueStats{Submitted: q.submitted.Load(), Completed: q.completed.Load(),
		Kicks: q.kicks.Load(), Interrupts: q.interrupts.Load()}
}

// ErrQueueClosed means the queue was stopped.
var ErrQueueClosed = errors.New("frontend: queue stopped")

// Submit makes r's chain available and notifies the device when it asks
// for it. It blocks while the ring has too few free descriptors.
func (q *Queue) Submit(r *Request) error {
	if r.f != q.f {
		return errors.New("frontend: request belongs to another front-end")
	}
	if len(r.Bufs) == 0 || r.Readable < 0 || r.Readable > len(r.Bufs) {
		return fmt.Errorf("frontend: chain of %d buffers with %d readable", len(r.Bufs), r.Readable)
	}
	indirect := q.f.indirect && !r.Direct && len(r.Bufs) > 1
	need := len(r.Bufs)
	if indirect {
		need = 1
	}
	q.mu.Lock()
	if r.inflight {
		q.mu.Unlock()
		return errors.New("frontend: request submitted while still in flight")
	}
	if indirect && r.tableCap < len(r.Bufs) {
		if err := r.growTable(len(r.Bufs)); err != nil {
			q.mu.Unlock()
			return err
		}
	}
	if need > int(q.d.Size()) {
		q.mu.Unlock()
		return fmt.Errorf("frontend: chain of %d descriptors exceeds queue size %d", need, q.d.Size())
	}
	for q.d.Free() < need && !q.closed {
		q.space.Wait()
	}
	if q.closed {
		q.mu.Unlock()
		return ErrQueueClosed
	}
	if err := q.addLocked(r, indirect); err != nil {
		q.mu.Unlock()
		return err
	}
	kick := q.needKickLocked()
	q.mu.Unlock()
	q.submitted.Add(1)
	if kick {
		q.Kick()
	}
	return nil
}

// addLocked makes r's chain available; the caller holds mu and checked
// that the ring has room.
func (q *Queue) addLocked(r *Request, indirect bool) error {
	select { // a completion left over from a timed-out wait
	case <-r.done:
	default:
	}
	var head uint16
	var err error
	if indirect {
		head, err = q.d.AddIndirectChain(r.table, r.Bufs, r.Readable)
		r.tableBufs = r.tableBufs[:0]
	} else {
		head, err = q.d.AddChain(r.Bufs, r.Readable)
	}
	if err != nil {
		return fmt.Errorf("frontend: queue %d: %w", q.index, err)
	}
	r.Head, r.UsedLen, r.err, r.q, r.inflight = head, 0, nil, q, true
	q.waiters[head] = r
	return nil
}

func (q *Queue) needKickLocked() bool {
	old := q.checked
	q.checked = q.d.AvailIdx()
	return q.f.opts.AlwaysKick || q.d.NeedsKick(old)
}

func (r *Request) growTable(n int) error {
	c := 8
	for c < n {
		c *= 2
	}
	gpa, err := r.f.Mem.AllocIn(0, uint64(c)*16)
	if err != nil {
		return fmt.Errorf("frontend: indirect table: %w", err)
	}
	r.Release()
	r.table, r.tableCap = gpa, c
	r.tableBufs = r.tableBufs[:0]
	return nil
}

// Kick notifies the device through the kick eventfd.
func (q *Queue) Kick() {
	unix.Write(q.kick, eventOne[:])
	q.kicks.Add(1)
}

var eventOne = [8]byte{1}

// ErrTimeout means a completion did not arrive in time.
var ErrTimeout = errors.New("frontend: timed out waiting for the device")

// Wait waits for r's completion, bounded by the front-end's Timeout. On
// a timeout r stays in flight (it cannot be resubmitted until the device
// returns it) and the error describes the ring.
func (q *Queue) Wait(r *Request) error { return q.WaitTimeout(r, q.f.opts.Timeout) }

// WaitTimeout is Wait with its own bound (none when d <= 0).
func (q *Queue) WaitTimeout(r *Request, d time.Duration) error {
	if d > 0 {
		r.timer.Reset(d)
		select {
		case <-r.done:
			r.timer.Stop()
		case <-r.timer.C:
			return fmt.Errorf("%w: queue %d, head %d after %v (%s)", ErrTimeout, q.index, r.Head, d, q.Describe())
		}
	} else {
		<-r.done
	}
	return r.err
}

// Do submits r and waits for it.
func (q *Queue) Do(r *Request) error {
	if err := q.Submit(r); err != nil {
		return err
	}
	return q.Wait(r)
}

// Describe summarises the ring state for error messages.
func (q *Queue) Describe() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	inflight := 0
	for _, w := range q.waiters {
		if w != nil {
			inflight++
		}
	}
	return fmt.Sprintf("avail idx %d, used idx %d, reaped %d, avail_event %d, used flags %#x, %d in flight, %d free descriptors",
		q.d.AvailIdx(), q.d.UsedIdx(), q.d.LastUsed(), q.d.AvailEvent(), q.d.UsedFlags(), inflight, q.d.Free())
}

// Strays returns (and forgets) used entries that matched no request: heads
// the driver never made available, or reported twice.
func (q *Queue) Strays() []UsedElem {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.strays
	q.strays = nil
	return s
}

// reap completes every used entry; the caller holds mu.
func (q *Queue) reapLocked() int {
	n := 0
	for {
		head, length, ok := q.d.Used()
		if !ok {
			break
		}
		n++
		if r := q.completeLocked(head, length); r != nil {
			r.done <- struct{}{}
		}
	}
	if n > 0 {
		q.completed.Add(uint64(n))
		q.space.Broadcast()
	}
	return n
}

// completeLocked matches a used entry with its request and records the
// completion in it; an entry that matches none is kept as a stray. The
// caller holds mu.
func (q *Queue) completeLocked(head uint16, length uint32) *Request {
	var r *Request
	if int(head) < len(q.waiters) {
		r = q.waiters[head]
		q.waiters[head] = nil
	}
	if r == nil {
		if len(q.strays) < 1024 {
			q.strays = append(q.strays, UsedElem{Head: head, Len: length})
		}
		return nil
	}
	r.UsedLen = length
	r.inflight = false
	if wl := r.writableLen(); len(r.Bufs) > 0 && uint64(length) > wl {
		r.err = fmt.Errorf("frontend: queue %d: device used %d bytes of a chain with %d writable", q.index, length, wl)
	}
	return r
}

// Reap collects used entries now, without waiting for an interrupt.
func (q *Queue) Reap() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.reapLocked()
}

func (q *Queue) startReaper() {
	q.reaped = make(chan struct{})
	go q.reaper()
}

func (q *Queue) reaper() {
	defer close(q.reaped)
	var buf [8]byte
	idle := 0
	for {
		q.mu.Lock()
		if q.closed || q.owned {
			q.mu.Unlock()
			return
		}
		n := q.reapLocked()
		pending := false
		if n == 0 && !q.f.opts.Poll {
			pending = q.d.EnableInterrupts()
		}
		q.mu.Unlock()
		if n > 0 || pending {
			idle = 0
			continue
		}
		if q.f.opts.Poll {
			if idle++; idle > 1000 {
				time.Sleep(20 * time.Microsecond)
			}
			continue
		}
		if _, err := q.call.Read(buf[:]); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond)
			continue
		}
		q.interrupts.Add(1)
	}
}

// stopReaper ends the reaper and fails the requests still in flight.
func (q *Queue) stopReaper() {
	q.mu.Lock()
	q.closed = true
	for i, r := range q.waiters {
		if r != nil {
			q.waiters[i] = nil
			r.inflight = false
			r.err = ErrQueueClosed
			select {
			case r.done <- struct{}{}:
			default:
			}
		}
	}
	q.space.Broadcast()
	q.mu.Unlock()
	if q.call != nil {
		// Closing the eventfd unblocks the reaper's read.
		q.call.Close()
		q.call, q.callFd = nil, -1
	}
	if q.reaped != nil {
		<-q.reaped
	}
}

// WithDriver runs fn with the queue's driver, holding the queue lock: the
// raw access hostile tests need (AddRaw, PublishHead, SetAvailIdx,
// SetUsedEvent...). Heads fn publishes complete as strays unless fn
// registers them with Track.
func (q *Queue) WithDriver(fn func(d *virtqueue.Driver)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	fn(q.d)
}

// Track makes r the waiter for a chain published by hand (inside
// WithDriver, which holds the lock: call it there) with head.
func (q *Queue) Track(r *Request, head uint16) error {
	if int(head) >= len(q.waiters) {
		return fmt.Errorf("frontend: head %d out of range", head)
	}
	select {
	case <-r.done:
	default:
	}
	r.Head, r.UsedLen, r.err, r.q, r.inflight = head, 0, nil, q, true
	q.waiters[head] = r
	return nil
}

// SlotsFor returns the descriptor indices the next n-descriptor raw chain
// will occupy (see virtqueue.Driver.SlotIndices), for building Next links.
func (q *Queue) SlotsFor(n int) []uint16 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.d.SlotIndices(n)
}
