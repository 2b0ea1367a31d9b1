package vhostuser

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// orderDevice's handlers reply at once to short chains; a long one waits
// until a short one has been served, or for a second.
type orderDevice struct {
	short chan struct{}
	timed atomic.Bool // a long chain gave up waiting
}

func (d *orderDevice) Features() uint64    { return 0 }
func (d *orderDevice) MaxQueues() int      { return 2 }
func (d *orderDevice) Config() []byte      { return nil }
func (d *orderDevice) NewHandler() Handler { return d }
func (d *orderDevice) Reset()              {}

func (d *orderDevice) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	if c.ReadableLen >= AssistMin {
		select {
		case <-d.short:
		case <-time.After(time.Second):
			d.timed.Store(true)
		}
	} else {
		d.short <- struct{}{}
	}
	return uint32(copy(c.Writable[0], "done"))
}

// TestAssistants: a long chain goes to an assistant, and the chain behind
// it is served meanwhile; without assistants the queue's worker, or a pool
// of one, serves them in ring order. In a pool of two, the second worker
// pops the short chain while the first serves the long one.
func TestAssistants(t *testing.T) {
	for _, tc := range []struct {
		pool, assistants int
		overlap          bool // the short chain is served while the long one is
	}{
		{0, 0, false},
		{0, 1, true},
		{1, 0, false},
		{1, 1, true},
		{2, 0, true},
	} {
		fd, m := testGuest(t, "assist-guest", 1<<20)
		// Queue 1's ring (vringAddr's layout): a long chain, head 0,
		// reading AssistMin bytes, then a short one, head 2.
		r := m[fzRingStride:]
		putDesc(r, 0, 0x80000, AssistMin, virtqueue.DescNext, 1)
		putDesc(r, 1, 0x10000, 64, virtqueue.DescWrite, 0)
		putDesc(r, 2, 0x11000, 64, virtqueue.DescNext, 3)
		putDesc(r, 3, 0x11040, 64, virtqueue.DescWrite, 0)
		binary.LittleEndian.PutUint16(r[0x1000+4:], 0)
		binary.LittleEndian.PutUint16(r[0x1000+6:], 2)
		binary.LittleEndian.PutUint16(r[0x1000+2:], 2)

		dev := &orderDevice{short: make(chan struct{}, 1)}
		s := newDeviceSession(t, dev, Options{Log: quietLog(), ThreadPoolSize: tc.pool, Assistants: tc.assistants})
		// The handoff goes only to an assistant already waiting for
		// work: give the assistants time to get there.
		time.Sleep(100 * time.Millisecond)
		s.startRings(fd, 2)
		used := r[0x2000:]
		deadline := time.Now().Add(10 * time.Second)
		for binary.LittleEndian.Uint16(used[2:]) != 2 {
			if time.Now().After(deadline) {
				t.Fatalf("pool %d, assistants %d: %d of 2 chains used", tc.pool, tc.assistants, binary.LittleEndian.Uint16(used[2:]))
			}
			time.Sleep(time.Millisecond)
		}
		// Once the short chain is served, the long one may be used
		// before or after it; in ring order it comes first.
		got := [2]uint32{binary.LittleEndian.Uint32(used[4:]), binary.LittleEndian.Uint32(used[12:])}
		if !tc.overlap && got != [2]uint32{0, 2} {
			t.Errorf("pool %d, assistants %d: heads used in order %v, want [0 2]", tc.pool, tc.assistants, got)
		}
		if n, m := binary.LittleEndian.Uint32(used[8:]), binary.LittleEndian.Uint32(used[16:]); n != 4 || m != 4 {
			t.Errorf("pool %d, assistants %d: reply lengths %d and %d, want 4", tc.pool, tc.assistants, n, m)
		}
		if dev.timed.Load() == tc.overlap {
			t.Errorf("pool %d, assistants %d: the long chain gave up waiting for the short one: %v", tc.pool, tc.assistants, dev.timed.Load())
		}
		s.hangUp()
	}
}
