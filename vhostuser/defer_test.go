package vhostuser

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// Replies written by parkDevice.
const (
	replyLater    = 0xa5a5a5a5a5a5a5a5 // xored with the tag: completed by the device
	replyCanceled = 0xcccccccccccccccc // cancelled
	replyRefused  = 0xeeeeeeeeeeeeeeee // Park refused: answered at once
)

// parkDevice parks every chain it serves and, when complete is set,
// completes each from another goroutine after a moment. Cancel completes
// the chain with replyCanceled, unless deaf is set.
type parkDevice struct {
	queues   int
	complete bool
	deaf     bool
	parked   atomic.Int64
	refused  atomic.Int64
	canceled atomic.Int64
	later    chan *parkedChain
}

type parkedChain struct {
	dev *parkDevice
	d   *Deferred
	tag uint64
}

func (p *parkedChain) Cancel() {
	p.dev.canceled.Add(1)
	if p.dev.deaf {
		return
	}
	p.d.Complete(func(w [][]byte) uint32 {
		binary.LittleEndian.PutUint64(w[0], replyCanceled)
		return 8
	})
}

func (d *parkDevice) Features() uint64    { return 0 }
func (d *parkDevice) MaxQueues() int      { return d.queues }
func (d *parkDevice) Config() []byte      { return nil }
func (d *parkDevice) NewHandler() Handler { return d }
func (d *parkDevice) Reset()              {}

func (d *parkDevice) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	panic("Handle called on a DeferringHandler")
}

func (d *parkDevice) HandleDeferring(qi int, c *virtqueue.DescriptorChain, p *Parker) uint32 {
	pc := &parkedChain{dev: d, tag: binary.LittleEndian.Uint64(c.Readable[0])}
	if pc.d = p.Park(pc); pc.d == nil {
		d.refused.Add(1)
		binary.LittleEndian.PutUint64(c.Writable[0], replyRefused)
		return 8
	}
	if pc.d.Chain() != c {
		panic("the Deferred holds another chain")
	}
	d.parked.Add(1)
	if d.complete {
		d.later <- pc
	}
	// Whatever is returned is ignored, and so is what is written now.
	binary.LittleEndian.PutUint64(c.Writable[0], 0xbad)
	return 1
}

// completer completes the chains sent to later, each 1 ms after it came.
func (d *parkDevice) completer() {
	for pc := range d.later {
		time.Sleep(time.Millisecond)
		pc.d.Complete(func(w [][]byte) uint32 {
			binary.LittleEndian.PutUint64(w[0], pc.tag^replyLater)
			return 8
		})
	}
}

// TestDeferredComplete: a handler parks every chain and a goroutine of its
// own completes them later; each comes back once with its reply, through
// a ring's own worker and through a pool, with and without EVENT_IDX (the
// completions must notify the driver, which sleeps on its call eventfd).
func TestDeferredComplete(t *testing.T) {
	for _, pool := range []int{0, 2} {
		for _, eventIdx := range []bool{false, true} {
			t.Run(fmt.Sprintf("pool%d/eventidx=%v", pool, eventIdx), func(t *testing.T) {
				dev := &parkDevice{queues: 2, complete: true, later: make(chan *parkedChain, 64)}
				go dev.completer()
				t.Cleanup(func() { close(dev.later) }) // after the session's hang-up
				fd, m := testGuest(t, "defer-guest", 1<<20)
				s := newDeviceSession(t, dev, Options{Log: quietLog(), ThreadPoolSize: pool})
				features := uint64(0)
				if eventIdx {
					features = FeatureEventIdx
				}
				s.request(SetFeatures, u64le(features), true)
				s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, fd)
				d, kick, call := deferRing(t, s, m, 1, eventIdx)
				// drive keeps 8 chains in flight: half the ring, all parked.
				if err := drive(m, 1, d, kick, call, 500); err != nil {
					t.Fatal(err)
				}
				if n := dev.refused.Load(); n != 0 {
					t.Errorf("%d chains refused with at most half the ring parked", n)
				}
				if n := dev.parked.Load(); n != 500 {
					t.Errorf("%d chains parked, want 500", n)
				}
			})
		}
	}
}

// deferRing starts ring q of 16 entries over m with kick and call
// eventfds, closed when t ends.
func deferRing(t *testing.T, s *testSession, m []byte, q int, eventIdx bool) (*virtqueue.Driver, int, int) {
	t.Helper()
	d := virtqueue.NewDriver(m, 0, uint64(q*fzRingStride), 16, eventIdx)
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	call, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(kick); unix.Close(call) })
	s.startRing(uint32(q), addrPayload(uint32(q), d.Addresses(fzUserBase)), kick, call)
	return d, kick, call
}

// postChains makes n chains available on ring q (tags q<<32 | i) and
// kicks; it returns the heads by tag.
func postChains(t *testing.T, m []byte, q int, d *virtqueue.Driver, kick, n int) map[uint16]uint64 {
	t.Helper()
	heads := map[uint16]uint64{}
	for i := 0; i < n; i++ {
		tag := uint64(q)<<32 | uint64(i)
		slot := uint64(d.SlotIndices(1)[0])
		r := uint64(0x80000 + q*0x10000 + int(slot)*0x100)
		binary.LittleEndian.PutUint64(m[r:], tag)
		binary.LittleEndian.PutUint64(m[r+0x80:], 0)
		head, err := d.Add([]virtqueue.Buffer{{Addr: r, Len: 8}}, []virtqueue.Buffer{{Addr: r + 0x80, Len: 8}})
		if err != nil {
			t.Fatal(err)
		}
		heads[head] = tag
	}
	unix.Write(kick, u64le(1))
	return heads
}

// reapChains waits until want chains are used (or 10 s passed) and
// returns their replies by tag, a used length other than 8 as
// ^uint64(length).
func reapChains(t *testing.T, m []byte, q int, d *virtqueue.Driver, heads map[uint16]uint64, want int) map[uint64]uint64 {
	t.Helper()
	got := map[uint64]uint64{}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < want && time.Now().Before(deadline) {
		head, length, ok := d.Used()
		if !ok {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		tag, known := heads[head]
		if !known {
			t.Fatalf("head %d used twice or never made available", head)
		}
		delete(heads, head)
		r := uint64(0x80000 + q*0x10000 + int(head)*0x100)
		if length != 8 {
			got[tag] = ^uint64(length)
		} else {
			got[tag] = binary.LittleEndian.Uint64(m[r+0x80:])
		}
	}
	return got
}

// countReplies counts the replies equal to each of vs.
func countReplies(got map[uint64]uint64, vs ...uint64) []int {
	n := make([]int, len(vs))
	for _, r := range got {
		for i, v := range vs {
			if r == v {
				n[i]++
			}
		}
	}
	return n
}

// TestDeferredBound: a ring parks at most half its size, and the back-end
// at most Options.MaxDeferred over its rings; past those the handler is
// told at once (Park returns nil) and answers the chain itself.
func TestDeferredBound(t *testing.T) {
	dev := &parkDevice{queues: 3}
	fd, m := testGuest(t, "defer-bound", 1<<20)
	s := newDeviceSession(t, dev, Options{Log: quietLog(), MaxDeferred: 11})
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, fd)
	d1, kick1, _ := deferRing(t, s, m, 1, false)
	heads1 := postChains(t, m, 1, d1, kick1, 8) // 16 entries, 2 descriptors each: a full ring
	got := reapChains(t, m, 1, d1, heads1, 0)
	for start := time.Now(); dev.parked.Load()+dev.refused.Load() < 8 && time.Since(start) < 10*time.Second; {
		time.Sleep(time.Millisecond)
	}
	if p, r := dev.parked.Load(), dev.refused.Load(); p != 8 || r != 0 {
		t.Fatalf("ring of 16: %d parked, %d refused; want 8 and 0", p, r)
	}
	// The used ring carries nothing yet.
	if _, _, ok := d1.Used(); ok || len(got) != 0 {
		t.Fatal("a parked chain came back before it was completed")
	}
	d2, kick2, _ := deferRing(t, s, m, 2, false)
	heads2 := postChains(t, m, 2, d2, kick2, 8)
	got = reapChains(t, m, 2, d2, heads2, 5)
	if n := countReplies(got, replyRefused)[0]; n != 5 || len(got) != 5 {
		t.Errorf("second ring with 8 of MaxDeferred 11 parked on the first: %d answered at once (%v), want 5 refused", len(got), got)
	}
	if p := dev.parked.Load(); p != 11 {
		t.Errorf("%d parked, want MaxDeferred (11)", p)
	}
}

// TestDeferredStop: stopping a ring (GET_VRING_BASE), resetting the device
// and the front-end's hang-up ask the device to cancel the parked chains
// and wait for them; each comes back once, with the device's cancel reply.
// A device that does not answer its Cancel holds the stop up parkedGrace,
// no longer; its chains come back with nothing written.
func TestDeferredStop(t *testing.T) {
	defer func(g time.Duration) { parkedGrace = g }(parkedGrace)
	parkedGrace = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		deaf bool
		end  func(s *testSession)
	}{
		{"GET_VRING_BASE", false, func(s *testSession) { s.request(GetVringBase, u32le(1, 0), true) }},
		{"RESET_DEVICE", false, func(s *testSession) { s.request(ResetDevice, nil, true) }},
		{"SET_MEM_TABLE", false, func(s *testSession) {
			fd := testMemfd(s.t, "defer-other", 1<<20)
			s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase+(1<<30), 0)...), true, fd)
		}},
		{"hang-up", false, func(s *testSession) { s.hangUp() }},
		{"GET_VRING_BASE, deaf device", true, func(s *testSession) { s.request(GetVringBase, u32le(1, 0), true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := &parkDevice{queues: 2, deaf: tc.deaf}
			fd, m := testGuest(t, "defer-stop", 1<<20)
			s := newDeviceSession(t, dev, Options{Log: quietLog()})
			s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, fd)
			d, kick, _ := deferRing(t, s, m, 1, false)
			heads := postChains(t, m, 1, d, kick, 6)
			for start := time.Now(); dev.parked.Load() < 6 && time.Since(start) < 10*time.Second; {
				time.Sleep(time.Millisecond)
			}
			start := time.Now()
			tc.end(s)
			took := time.Since(start)
			got := reapChains(t, m, 1, d, heads, 6)
			want := uint64(replyCanceled)
			if tc.deaf {
				want = ^uint64(0) // used length 0
				if took < parkedGrace {
					t.Errorf("stop took %v with a device that ignores Cancel, less than the grace of %v", took, parkedGrace)
				}
			} else if took > parkedGrace {
				t.Errorf("stop took %v although the device answered its Cancels", took)
			}
			if n := countReplies(got, want)[0]; n != 6 || len(got) != 6 {
				t.Errorf("after %s: replies %v, want 6 of %#x", tc.name, got, want)
			}
			if c := dev.canceled.Load(); c != 6 {
				t.Errorf("%d Cancels for 6 parked chains", c)
			}
		})
	}
}

// TestDeferredAddMemRegKeeps: a memory change that keeps every region the
// parked chains' layout maps (ADD_MEM_REG) cancels nothing.
func TestDeferredAddMemRegKeeps(t *testing.T) {
	dev := &parkDevice{queues: 2}
	fd, m := testGuest(t, "defer-add", 1<<20)
	s := newDeviceSession(t, dev, Options{Log: quietLog()})
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, fd)
	d, kick, _ := deferRing(t, s, m, 1, false)
	postChains(t, m, 1, d, kick, 3)
	for start := time.Now(); dev.parked.Load() < 3 && time.Since(start) < 10*time.Second; {
		time.Sleep(time.Millisecond)
	}
	other := testMemfd(t, "defer-add-2", 1<<20)
	if st := s.request(AddMemReg, append(make([]byte, 8), region(1<<30, 1<<20, fzUserBase+(1<<30), 0)...), true, other); st != 0 {
		t.Fatal("ADD_MEM_REG refused")
	}
	if c := dev.canceled.Load(); c != 0 {
		t.Errorf("ADD_MEM_REG cancelled %d parked chains", c)
	}
}
