package virtqueue

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const (
	testRAM    = 1 << 20
	testGPA    = 0x100000 // guest address of the first byte
	testUser   = 0x7f0000000000
	testRing   = testGPA
	testBuffer = testGPA + 0x10000
)

// newTestMemory maps testRAM bytes of memfd memory and returns the table the
// device sees and the bytes the driver writes.
func newTestMemory(t testing.TB) (*MemoryTable, []byte) {
	fd, err := unix.MemfdCreate("vq-test", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Ftruncate(fd, testRAM))
	r, err := MapRegion(Region{GuestAddr: testGPA, Size: testRAM, UserAddr: testUser}, fd)
	require.NoError(t, err)
	t.Cleanup(r.Unmap)
	mt, err := NewMemoryTable([]*MappedRegion{r})
	require.NoError(t, err)
	return mt, r.Bytes()
}

func newPair(t testing.TB, size uint16, eventIdx bool) (*MemoryTable, *Driver, *Queue) {
	mt, mem := newTestMemory(t)
	d := NewDriver(mem, testGPA, testRing, size, eventIdx)
	q, err := NewQueue(size, 0, eventIdx)
	require.NoError(t, err)
	require.NoError(t, q.Translate(mt, d.Addresses(testUser-testGPA)))
	return mt, d, q
}

func TestPopDirectAndIndirect(t *testing.T) {
	mt, d, q := newPair(t, 16, true)
	c := NewDescriptorChain(8)
	copy(d.Memory(testBuffer, 5), "hello")
	head, err := d.Add([]Buffer{{testBuffer, 5}}, []Buffer{{testBuffer + 100, 10}, {testBuffer + 200, 20}})
	require.NoError(t, err)
	ok, err := q.Pop(mt, c)
	require.True(t, ok)
	require.NoError(t, err)
	require.Equal(t, head, c.Head)
	require.Equal(t, "hello", string(c.Readable[0]))
	require.Len(t, c.Writable, 2)
	require.EqualValues(t, 30, c.WritableLen)
	copy(c.Writable[0], "ok")
	q.PushUsed(c.Head, 2)
	require.True(t, q.NeedsNotify())
	h, n, ok := d.Used()
	require.True(t, ok)
	require.Equal(t, head, h)
	require.EqualValues(t, 2, n)
	require.Equal(t, "ok", string(d.Memory(testBuffer+100, 2)))

	_, err = d.AddIndirect(testBuffer+0x1000, []Buffer{{testBuffer, 5}}, []Buffer{{testBuffer + 300, 7}})
	require.NoError(t, err)
	ok, err = q.Pop(mt, c)
	require.True(t, ok)
	require.NoError(t, err)
	require.EqualValues(t, 5, c.ReadableLen)
	require.EqualValues(t, 7, c.WritableLen)
	ok, _ = q.Pop(mt, c)
	require.False(t, ok)
}

func TestMalformedChains(t *testing.T) {
	outside := uint64(testGPA + testRAM)
	for _, tc := range []struct {
		name  string
		build func(d *Driver) error
		want  error
	}{
		{"outside RAM", func(d *Driver) error {
			_, err := d.Add([]Buffer{{outside, 16}}, nil)
			return err
		}, ErrBadAddress},
		{"ends past RAM", func(d *Driver) error {
			_, err := d.Add([]Buffer{{outside - 8, 16}}, nil)
			return err
		}, ErrBadAddress},
		{"loop", func(d *Driver) error {
			s := d.SlotIndices(2)
			_, err := d.AddRaw([]Desc{{testBuffer, 8, DescNext, s[1]}, {testBuffer, 8, DescNext, s[0]}})
			return err
		}, ErrChainTooLong},
		{"next out of range", func(d *Driver) error {
			_, err := d.AddRaw([]Desc{{testBuffer, 8, DescNext, 999}})
			return err
		}, ErrBadIndex},
		{"head out of range", func(d *Driver) error { d.PublishHead(17); return nil }, ErrBadHead},
		{"readable after writable", func(d *Driver) error {
			s := d.SlotIndices(2)
			_, err := d.AddRaw([]Desc{{testBuffer, 8, DescNext | DescWrite, s[1]}, {testBuffer, 8, 0, 0}})
			return err
		}, ErrReadAfterWrite},
		{"indirect with next", func(d *Driver) error {
			s := d.SlotIndices(2)
			_, err := d.AddRaw([]Desc{{testBuffer, 16, DescIndirect | DescNext, s[1]}, {testBuffer, 8, 0, 0}})
			return err
		}, ErrIndirectNext},
		{"indirect odd length", func(d *Driver) error {
			_, err := d.AddRaw([]Desc{{testBuffer, 17, DescIndirect, 0}})
			return err
		}, ErrBadIndirectTable},
		{"nested indirect", func(d *Driver) error {
			d.putDesc(testBuffer, 0, Desc{testBuffer, 16, DescIndirect, 0})
			_, err := d.AddRaw([]Desc{{testBuffer, 16, DescIndirect, 0}})
			return err
		}, ErrNestedIndirect},
		{"indirect table outside RAM", func(d *Driver) error {
			_, err := d.AddRaw([]Desc{{outside, 32, DescIndirect, 0}})
			return err
		}, ErrBadAddress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mt, d, q := newPair(t, 16, false)
			require.NoError(t, tc.build(d))
			c := NewDescriptorChain(4)
			ok, err := q.Pop(mt, c)
			require.True(t, ok)
			require.ErrorIs(t, err, tc.want)
			q.PushUsed(c.Head, 0)
		})
	}
}

func TestRunawayAvailIndex(t *testing.T) {
	mt, d, q := newPair(t, 16, false)
	d.SetAvailIdx(100)
	ok, err := q.Pop(mt, NewDescriptorChain(4))
	require.False(t, ok)
	require.Error(t, err)
}

func TestEventIdxSuppression(t *testing.T) {
	mt, d, q := newPair(t, 16, true)
	c := NewDescriptorChain(4)
	for i := 0; i < 3; i++ {
		_, err := d.Add([]Buffer{{testBuffer, 8}}, nil)
		require.NoError(t, err)
	}
	// The driver wants an interrupt only after the third used entry.
	d.SetUsedEvent(2)
	notified := 0
	for i := 0; i < 3; i++ {
		ok, err := q.Pop(mt, c)
		require.True(t, ok)
		require.NoError(t, err)
		q.PushUsed(c.Head, 0)
		if q.NeedsNotify() {
			notified++
		}
	}
	// The first push always notifies (no previous signal); then only when
	// crossing used_event.
	require.Equal(t, 2, notified)
	require.False(t, q.EnableNotification())
	require.EqualValues(t, 3, d.AvailEvent())
}

func TestSegmentsAcrossRegions(t *testing.T) {
	fd, err := unix.MemfdCreate("vq-test", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Ftruncate(fd, 2*4096))
	a, err := MapRegion(Region{GuestAddr: 0, Size: 4096, UserAddr: 0x10000}, fd)
	require.NoError(t, err)
	b, err := MapRegion(Region{GuestAddr: 4096, Size: 4096, UserAddr: 0x20000, MmapOffset: 4096}, fd)
	require.NoError(t, err)
	mt, err := NewMemoryTable([]*MappedRegion{a, b})
	require.NoError(t, err)
	segs, err := mt.AppendSegments(nil, 4000, 200)
	require.NoError(t, err)
	require.Len(t, segs, 2)
	require.Len(t, segs[0], 96)
	require.Len(t, segs[1], 104)
	_, err = mt.Slice(4000, 200)
	require.ErrorIs(t, err, ErrBadAddress)
	_, err = mt.AppendSegments(nil, 8000, 200)
	require.ErrorIs(t, err, ErrBadAddress)
	_, err = NewMemoryTable([]*MappedRegion{a, a})
	require.Error(t, err)
}

func BenchmarkPopPush(b *testing.B) {
	mt, d, q := newPair(b, 256, true)
	c := NewDescriptorChain(8)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		d.publish(0)
		if i == 0 {
			d.putDesc(d.desc, 0, Desc{Addr: testBuffer, Len: 64})
		}
		if ok, err := q.Pop(mt, c); !ok || err != nil {
			b.Fatal(ok, err)
		}
		q.PushUsed(c.Head, 0)
		q.NeedsNotify()
		d.lastUsed++
	}
}
