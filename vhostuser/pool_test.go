package vhostuser

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// echoDevice copies each chain's 8-byte tag into its reply. With overlap
// set, a chain whose tag is a multiple of 64 (below overlapBelow) waits
// until two more chains have been served meanwhile, or gives up after a
// second.
type echoDevice struct {
	queues       int
	overlap      bool
	overlapBelow uint64
	served       atomic.Int64
	gaveUp       atomic.Int32
}

func (d *echoDevice) Features() uint64    { return 0 }
func (d *echoDevice) MaxQueues() int      { return d.queues }
func (d *echoDevice) Config() []byte      { return nil }
func (d *echoDevice) NewHandler() Handler { return d }
func (d *echoDevice) Reset()              {}

func (d *echoDevice) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	tag := binary.LittleEndian.Uint64(c.Readable[0])
	if d.overlap && tag%64 == 0 && uint32(tag) < uint32(d.overlapBelow) {
		start := d.served.Load()
		deadline := time.Now().Add(time.Second)
		for d.served.Load() < start+2 {
			if time.Now().After(deadline) {
				d.gaveUp.Add(1)
				break
			}
			time.Sleep(10 * time.Microsecond)
		}
	}
	binary.LittleEndian.PutUint64(c.Writable[0], tag^0xa5a5a5a5a5a5a5a5)
	d.served.Add(1)
	return 8
}

// TestPoolRings drives two request queues at once through thread pools of
// one and three workers, with and without EVENT_IDX, the way a guest does:
// publish, kick when the device asks for it, sleep on the call eventfd
// when nothing is used. Every chain must come back exactly once with its
// own reply; a kick lost between the pool's workers would stall a queue
// and fail the test. With three workers, a chain held up in its handler
// must not hold up the chains behind it.
func TestPoolRings(t *testing.T) {
	const perQueue = 4000
	for _, tc := range []struct {
		pool     int
		eventIdx bool
	}{{1, false}, {1, true}, {3, false}, {3, true}} {
		t.Run(fmt.Sprintf("pool%d/eventidx=%v", tc.pool, tc.eventIdx), func(t *testing.T) {
			dev := &echoDevice{queues: 3, overlap: tc.pool > 1, overlapBelow: perQueue - 32}
			fd, m := testGuest(t, "pool-guest", 1<<20)
			s := newDeviceSession(t, dev, Options{Log: quietLog(), ThreadPoolSize: tc.pool})
			features := uint64(0)
			if tc.eventIdx {
				features = FeatureEventIdx
			}
			s.request(SetFeatures, u64le(features), true)
			s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, fd)
			type ring struct {
				d          *virtqueue.Driver
				kick, call int
			}
			rings := make([]ring, dev.queues)
			for q := range rings {
				d := virtqueue.NewDriver(m, 0, uint64(q*fzRingStride), 16, tc.eventIdx)
				kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				call, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(kick)
				defer unix.Close(call)
				s.startRing(uint32(q), addrPayload(uint32(q), d.Addresses(fzUserBase)), kick, call)
				rings[q] = ring{d, kick, call}
			}
			var wg sync.WaitGroup
			errs := make(chan error, len(rings))
			for q := 1; q < len(rings); q++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- drive(m, q, rings[q].d, rings[q].kick, rings[q].call, perQueue)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			if n := dev.gaveUp.Load(); n > 0 {
				t.Errorf("a pool of %d served nothing else while a chain waited, %d times", tc.pool, n)
			}
			s.hangUp()
		})
	}
}

// drive keeps up to 16 chains in flight on ring q until n have come back,
// checking each reply against its chain's tag.
func drive(m []byte, q int, d *virtqueue.Driver, kick, call, n int) error {
	buf := func(head uint16) (uint64, uint64) {
		base := uint64(0x80000 + q*0x10000 + int(head)*0x100)
		return base, base + 0x80
	}
	tags := make(map[uint16]uint64)
	var sent, done uint64
	var one, got [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	for done < uint64(n) {
		old := d.AvailIdx()
		for sent < uint64(n) && d.Free() >= 2 {
			tag := uint64(q)<<32 | sent
			// The head is the descriptor taken first: the last free one.
			r, w := buf(uint16(d.SlotIndices(1)[0]))
			binary.LittleEndian.PutUint64(m[r:], tag)
			head, err := d.Add([]virtqueue.Buffer{{Addr: r, Len: 8}}, []virtqueue.Buffer{{Addr: w, Len: 8}})
			if err != nil {
				return err
			}
			tags[head] = tag
			sent++
		}
		if d.AvailIdx() != old && d.NeedsKick(old) {
			unix.Write(kick, one[:])
		}
		reaped := false
		for {
			head, length, ok := d.Used()
			if !ok {
				break
			}
			reaped = true
			tag, known := tags[head]
			if !known {
				return fmt.Errorf("queue %d: head %d used twice or never made available", q, head)
			}
			delete(tags, head)
			_, w := buf(head)
			if got := binary.LittleEndian.Uint64(m[w:]); length != 8 || got != tag^0xa5a5a5a5a5a5a5a5 {
				return fmt.Errorf("queue %d: head %d: reply %#x (%d bytes) for tag %#x", q, head, got, length, tag)
			}
			done++
		}
		if reaped || d.EnableInterrupts() {
			continue
		}
		pfd := []unix.PollFd{{Fd: int32(call), Events: unix.POLLIN}}
		if k, err := unix.Poll(pfd, 10000); err != nil && err != unix.EINTR {
			return err
		} else if k == 0 {
			return fmt.Errorf("queue %d: stalled with %d of %d chains back, %d in flight", q, done, n, len(tags))
		}
		unix.Read(call, got[:])
	}
	return nil
}

// TestTokenKickWhileHeld: a kick that comes while a pool worker holds the
// ring's token finds no one to send the ring to. The holder, once the ring
// looks empty to it and it gives the token up, must send the ring to the
// pool itself, or the chain that kick announced would wait for the next.
// TestPoolRings cannot time that window; this test steps through it.
func TestTokenKickWhileHeld(t *testing.T) {
	const size = 1 << 20
	fd, m := testGuest(t, "token", size)
	r, err := virtqueue.MapRegion(virtqueue.Region{Size: size, UserAddr: 1 << 30}, fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Unmap)
	mt, err := virtqueue.NewMemoryTable([]*virtqueue.MappedRegion{r})
	if err != nil {
		t.Fatal(err)
	}
	d := virtqueue.NewDriver(m, 0, 0, 16, true)
	q, err := virtqueue.NewQueue(16, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Translate(mt, d.Addresses(1<<30)); err != nil {
		t.Fatal(err)
	}

	b := &Backend{ready: make(chan *vring, 1)}
	v := newVring(b, 1)
	posted := func() bool {
		select {
		case got := <-b.ready:
			if got != v {
				t.Fatal("another ring was sent")
			}
			v.inflight.Done()
			return true
		default:
			return false
		}
	}
	for _, kick := range []bool{false, true} {
		v.owned.Store(true) // a pool worker holds the token
		v.kicked.Store(false)
		if kick {
			v.summon() // the ring's worker saw a kick meanwhile
			if posted() {
				t.Fatal("the ring was sent while its token was held")
			}
		}
		if !v.letGo(q) {
			t.Fatal("the ring is empty, yet the holder kept the token")
		}
		if got := posted(); got != kick {
			t.Errorf("kick %v: the ring went back to the pool: %v", kick, got)
		}
		if got := v.owned.Load(); got != kick {
			t.Errorf("kick %v: the token is held again: %v", kick, got)
		}
	}
}
