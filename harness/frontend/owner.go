package frontend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// Owner drives one queue from a single goroutine, as an event loop, in
// place of Submit, Wait and the queue's reaper goroutine: the loop adds
// chains (Add, a batch under one lock), notifies the device once per
// batch (Kick), reaps the completions itself (Reap) and sleeps on the call
// eventfd only when nothing is left to reap (Wait), as a guest driver
// does. No goroutine hand-off, channel or timer is involved per request,
// and an indirect table that already holds the chain is not written
// again; benchmarks use it to keep the driver side cheap.
//
// Requests added through an Owner complete only through Reap: their Wait
// never returns. Release hands the queue back to its reaper.
type Owner struct {
	q        *Queue
	inflight int
	released bool
	buf      [8]byte
	raw      [1]virtqueue.Desc
}

// ErrRingFull means the ring has too few free descriptors for a chain.
var ErrRingFull = virtqueue.ErrRingFull

// Own stops the queue's reaper and returns the Owner driving the queue.
// Requests submitted before must have completed.
func (q *Queue) Own() (*Owner, error) {
	q.mu.Lock()
	switch {
	case q.closed || !q.started:
		q.mu.Unlock()
		return nil, ErrQueueClosed
	case q.owned:
		q.mu.Unlock()
		return nil, fmt.Errorf("frontend: queue %d already has an owner", q.index)
	}
	for _, w := range q.waiters {
		if w != nil {
			q.mu.Unlock()
			return nil, fmt.Errorf("frontend: queue %d has requests in flight", q.index)
		}
	}
	q.owned = true
	q.mu.Unlock()
	// Wake the reaper from its read of the call eventfd; it sees owned
	// and ends. The extra count only makes the first Wait return early.
	unix.Write(q.callFd, eventOne[:])
	if q.reaped != nil {
		<-q.reaped
	}
	return &Owner{q: q}, nil
}

// Queue returns the owned queue.
func (o *Owner) Queue() *Queue { return o.q }

// InFlight returns how many requests added through o have not come back.
func (o *Owner) InFlight() int { return o.inflight }

// Add makes the requests' chains available, in order, without notifying
// the device (see Kick), and returns how many it added: all of them, or
// those before the one that failed. It fails with ErrRingFull rather than
// wait for room.
func (o *Owner) Add(rs ...*Request) (int, error) {
	q := o.q
	for _, r := range rs {
		if r.f != q.f {
			return 0, errors.New("frontend: request belongs to another front-end")
		}
		if len(r.Bufs) == 0 || r.Readable < 0 || r.Readable > len(r.Bufs) {
			return 0, fmt.Errorf("frontend: chain of %d buffers with %d readable", len(r.Bufs), r.Readable)
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case o.released:
		return 0, errors.New("frontend: Add after Release")
	case q.closed:
		return 0, ErrQueueClosed
	}
	for i, r := range rs {
		if err := o.addLocked(r); err != nil {
			q.submitted.Add(uint64(i))
			return i, err
		}
		o.inflight++
	}
	q.submitted.Add(uint64(len(rs)))
	return len(rs), nil
}

func (o *Owner) addLocked(r *Request) error {
	q := o.q
	if r.inflight {
		return errors.New("frontend: request submitted while still in flight")
	}
	indirect := q.f.indirect && !r.Direct && len(r.Bufs) > 1
	if !indirect {
		if q.d.Free() < len(r.Bufs) {
			return ErrRingFull
		}
		return q.addLocked(r, false)
	}
	if q.d.Free() < 1 {
		return ErrRingFull
	}
	if r.tableCap < len(r.Bufs) {
		if err := r.growTable(len(r.Bufs)); err != nil {
			return err
		}
	}
	if !r.tableHolds() {
		writeTable(q.d.Memory(r.table, uint64(len(r.Bufs))*16), r.Bufs, r.Readable)
		r.tableBufs = append(r.tableBufs[:0], r.Bufs...)
		r.tableReadable = r.Readable
	}
	o.raw[0] = virtqueue.Desc{Addr: r.table, Len: uint32(len(r.Bufs)) * 16, Flags: virtqueue.DescIndirect}
	head, err := q.d.AddRaw(o.raw[:])
	if err != nil {
		return fmt.Errorf("frontend: queue %d: %w", q.index, err)
	}
	r.Head, r.UsedLen, r.err, r.q, r.inflight = head, 0, nil, q, true
	q.waiters[head] = r
	return nil
}

// tableHolds reports whether the indirect table holds r's chain already.
func (r *Request) tableHolds() bool {
	if r.tableReadable != r.Readable || len(r.tableBufs) != len(r.Bufs) {
		return false
	}
	for i, b := range r.Bufs {
		if r.tableBufs[i] != b {
			return false
		}
	}
	return true
}

// writeTable lays bufs out as an indirect descriptor table, as
// virtqueue.Driver.AddIndirectChain does.
func writeTable(t []byte, bufs []virtqueue.Buffer, readable int) {
	for i, b := range bufs {
		var flags uint16
		if i >= readable {
			flags |= virtqueue.DescWrite
		}
		next := uint16(0)
		if i+1 < len(bufs) {
			flags |= virtqueue.DescNext
			next = uint16(i + 1)
		}
		d := t[i*16 : i*16+16]
		binary.LittleEndian.PutUint64(d[0:], b.Addr)
		binary.LittleEndian.PutUint32(d[8:], b.Len)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], next)
	}
}

// Kick notifies the device if it asked to hear of the chains added since
// the last Kick (EVENT_IDX or the used ring's flag decide).
func (o *Owner) Kick() {
	q := o.q
	q.mu.Lock()
	kick := q.needKickLocked()
	q.mu.Unlock()
	if kick {
		q.Kick()
	}
}

// Reap appends every request the device has returned to out and returns
// it; each has UsedLen set and Err reporting a used length beyond its
// writable part. Used entries that match no request are kept as strays
// (see Queue.Strays) and skipped.
func (o *Owner) Reap(out []*Request) []*Request {
	q := o.q
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for {
		head, length, ok := q.d.Used()
		if !ok {
			break
		}
		n++
		if r := q.completeLocked(head, length); r != nil {
			o.inflight--
			out = append(out, r)
		}
	}
	if n > 0 {
		q.completed.Add(uint64(n))
	}
	return out
}

// Pending reports whether the device has returned entries not reaped yet.
func (o *Owner) Pending() bool {
	q := o.q
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.d.UsedIdx() != q.d.LastUsed()
}

// Wait sleeps until the device signals the call eventfd. It first asks
// for that signal and returns at once when used entries are already
// pending, so a loop calls it only once Reap returned nothing.
func (o *Owner) Wait() error {
	q := o.q
	q.mu.Lock()
	closed := q.closed
	pending := !closed && q.d.EnableInterrupts()
	call := q.call
	q.mu.Unlock()
	if closed || call == nil {
		return ErrQueueClosed
	}
	if pending {
		return nil
	}
	if _, err := call.Read(o.buf[:]); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return ErrQueueClosed
		}
		return fmt.Errorf("frontend: queue %d: reading the call eventfd: %w", q.index, err)
	}
	q.interrupts.Add(1)
	return nil
}

// Release hands the queue back to its reaper. Every request added through
// o must have come back through Reap.
func (o *Owner) Release() error {
	if o.released {
		return nil
	}
	if o.inflight != 0 {
		return fmt.Errorf("frontend: queue %d released with %d requests in flight", o.q.index, o.inflight)
	}
	q := o.q
	q.mu.Lock()
	defer q.mu.Unlock()
	o.released = true
	q.owned = false
	if q.closed {
		return nil
	}
	q.startReaper()
	return nil
}

// Err returns the error the queue recorded for r's completion (a used
// length beyond its writable part), or nil.
func (r *Request) Err() error { return r.err }
