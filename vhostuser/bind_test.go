package vhostuser

import (
	"testing"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// TestReleaseCatchesUp steps through the window TestIdleRingLetsGo cannot
// time: a memory change that comes while a worker holds the ring's token
// leaves the ring to that holder (rebind cannot take the token), and the
// holder may be past its last look at the layout (follow). When it gives
// the token up it must move the ring to the current layout, letting go of
// the old one, or the ring would keep the old layout's memory mapped
// until its next chain.
func TestReleaseCatchesUp(t *testing.T) {
	const size = 1 << 20
	fd, m := testGuest(t, "catch-up", size)
	d := virtqueue.NewDriver(m, 0, 0, 16, false)
	layout := func() *memState {
		r, err := virtqueue.MapRegion(virtqueue.Region{Size: size, UserAddr: 1 << 30}, fd)
		if err != nil {
			t.Fatal(err)
		}
		s, err := newMemState([]*guestRegion{{MappedRegion: r}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	b := &Backend{log: quietLog()}
	v := newVring(b, 1)
	v.addr = d.Addresses(1 << 30)
	q, err := virtqueue.NewQueue(16, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	old := layout()
	if err := q.Translate(old.table, v.addr); err != nil {
		t.Fatal(err)
	}
	v.q = q
	v.bound.Store(old) // old's one reference is the ring's
	v.owned.Store(true)
	cur := layout()
	b.mem.Store(cur) // installed while the token is held
	v.rebind(q, cur)
	if v.bound.Load() != old {
		t.Fatal("rebind moved a ring whose token was held")
	}
	v.release()
	if got := v.bound.Load(); got != cur {
		t.Errorf("after the holder gave the token up the ring is bound to %p, not the current layout %p", got, cur)
	}
	if old.regions[0].Bytes() != nil {
		t.Error("the old layout's region is still mapped")
	}
	if v.owned.Load() {
		t.Error("the token is still held")
	}
	v.bound.Swap(nil).release()
	cur.release()
}
