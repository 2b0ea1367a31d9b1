package virtqueue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The fake guest memory of FuzzDescriptorChain: one memfd of three 64 KiB
// slots, mapped as three layouts.
const (
	fzSlot  = 64 << 10
	fzBase  = 0x10000        // guest address of region 0
	fzHigh  = 0x100000       // guest address of region 1 in the layout with a hole
	fzUser  = 0x7f0000000000 // front-end address of region 0
	fzDesc  = 0              // ring parts, offsets in region 0
	fzAvail = 0x1000
	fzUsed  = 0x2000
	fzExtra = 0x4000 // where the input's extra bytes go (indirect tables, buffers)
)

// Layouts: 0 one region of two slots; 1 two regions with contiguous guest
// addresses; 2 two regions with a hole between them.
const fzLayouts = 3

type fzMem struct {
	all     []byte // the whole memfd
	tables  [fzLayouts]*MemoryTable
	regions [fzLayouts][]*MappedRegion
}

var (
	fzOnce sync.Once
	fzM    *fzMem
	fzErr  error
)

func fuzzMemory() (*fzMem, error) {
	fzOnce.Do(func() {
		fd, err := unix.MemfdCreate("vq-fuzz", unix.MFD_CLOEXEC)
		if err != nil {
			fzErr = err
			return
		}
		defer unix.Close(fd)
		if err := unix.Ftruncate(fd, 3*fzSlot); err != nil {
			fzErr = err
			return
		}
		m := &fzMem{}
		if m.all, err = unix.Mmap(fd, 0, 3*fzSlot, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
			fzErr = err
			return
		}
		layouts := [fzLayouts][]Region{
			{{GuestAddr: fzBase, Size: 2 * fzSlot, UserAddr: fzUser}},
			{{GuestAddr: fzBase, Size: fzSlot, UserAddr: fzUser}, {GuestAddr: fzBase + fzSlot, Size: fzSlot, UserAddr: fzUser + 0x100000, MmapOffset: fzSlot}},
			{{GuestAddr: fzBase, Size: fzSlot, UserAddr: fzUser}, {GuestAddr: fzHigh, Size: fzSlot, UserAddr: fzUser + 0x100000, MmapOffset: 2 * fzSlot}},
		}
		for i, rs := range layouts {
			for _, r := range rs {
				mr, err := MapRegion(r, fd)
				if err != nil {
					fzErr = err
					return
				}
				m.regions[i] = append(m.regions[i], mr)
			}
			if m.tables[i], err = NewMemoryTable(m.regions[i]); err != nil {
				fzErr = err
				return
			}
		}
		fzM = m
	})
	return fzM, fzErr
}

// gpaOf maps a host slice back to the guest address of its first byte, or
// reports that it lies outside every region.
func gpaOf(regions []*MappedRegion, seg []byte) (uint64, bool) {
	if len(seg) == 0 {
		return 0, false
	}
	p := uintptr(unsafe.Pointer(&seg[0]))
	for _, r := range regions {
		b := r.Bytes()
		base := uintptr(unsafe.Pointer(&b[0]))
		if p >= base && p-base < uintptr(len(b)) && uint64(p-base)+uint64(len(seg)) <= uint64(len(b)) {
			return r.GuestAddr + uint64(p-base), true
		}
	}
	return 0, false
}

// span is a guest address range.
type span struct{ addr, n uint64 }

// appendSpan adds a range, merging it with the previous one when
// contiguous, so that region splits do not matter in comparisons.
func appendSpan(s []span, addr, n uint64) []span {
	if n == 0 {
		return s
	}
	if k := len(s); k > 0 && s[k-1].addr+s[k-1].n == addr {
		s[k-1].n += n
		return s
	}
	return append(s, span{addr, n})
}

// modelMem reads guest memory the way the spec allows: a range may run
// from one region into the next only where guest addresses are contiguous.
type modelMem struct{ regions []*MappedRegion }

func (m modelMem) valid(addr, n uint64) bool {
	if addr+n < addr {
		return false
	}
	for n > 0 {
		var r *MappedRegion
		for _, x := range m.regions {
			if addr >= x.GuestAddr && addr-x.GuestAddr < x.Size {
				r = x
			}
		}
		if r == nil {
			return false
		}
		k := min(n, r.GuestAddr+r.Size-addr)
		addr, n = addr+k, n-k
	}
	return true
}

func (m modelMem) read(addr, n uint64) ([]byte, bool) {
	if !m.valid(addr, n) {
		return nil, false
	}
	out := make([]byte, 0, n)
	for n > 0 {
		for _, r := range m.regions {
			if addr >= r.GuestAddr && addr-r.GuestAddr < r.Size {
				off := addr - r.GuestAddr
				k := min(n, r.Size-off)
				out = append(out, r.Bytes()[off:off+k]...)
				addr, n = addr+k, n-k
				break
			}
		}
	}
	return out, true
}

// modelChain is an independent reading of the virtio 1.x chain rules: a
// table is walked at most as many steps as it has entries (the ring's
// table: the queue size; an indirect table: its own length, at most the
// queue size); no nested indirect tables, no INDIRECT with NEXT, no
// device-readable buffer after a device-writable one, every buffer inside
// guest memory. combined is how many descriptors the walk visited in all,
// the indirect descriptor included.
type modelChain struct {
	ok       bool
	readable []span
	writable []span
	combined int
	indirect bool
}

func walkModel(m modelMem, ring []byte, size int, head uint16) modelChain {
	var c modelChain
	if int(head) >= size {
		return c
	}
	table, tlen := ring, size
	idx, steps, writable := int(head), 0, false
	for {
		if steps >= tlen || idx >= tlen {
			return c
		}
		steps++
		c.combined++
		d := table[descSize*idx : descSize*idx+descSize]
		addr, n := binary.LittleEndian.Uint64(d[descAddrOff:]), uint64(binary.LittleEndian.Uint32(d[descLenOff:]))
		flags, next := binary.LittleEndian.Uint16(d[descFlagsOff:]), binary.LittleEndian.Uint16(d[descNextOff:])
		if flags&DescIndirect != 0 {
			if c.indirect || flags&DescNext != 0 || n == 0 || n%descSize != 0 || n/descSize > uint64(size) {
				return c
			}
			t, ok := m.read(addr, n)
			if !ok {
				return c
			}
			c.indirect = true
			table, tlen, idx, steps = t, int(n/descSize), 0, 0
			continue
		}
		if n > 0 && !m.valid(addr, n) {
			return c
		}
		if flags&DescWrite != 0 {
			writable = true
			c.writable = appendSpan(c.writable, addr, n)
		} else {
			if writable {
				return c
			}
			c.readable = appendSpan(c.readable, addr, n)
		}
		if flags&DescNext == 0 {
			c.ok = true
			return c
		}
		idx = int(next)
	}
}

// FuzzDescriptorChain lays out arbitrary descriptor tables and available
// rings over fake guest memory of one or two regions (contiguous or with
// a hole) and pops every chain. Pop must never panic, never return a
// segment outside guest memory, return a head outside the queue only as
// ErrBadHead, stop within the queue size, and agree with walkModel on
// which chains are well formed and on the bytes they cover. Afterwards the
// ring must still serve: a well-formed chain made available next is
// popped and returned (unless the input ran the available index past the
// ring's size, which breaks it until the device is reset).
//
// cfg: bits 0-1 layout (mod 3), 2-5 log2 of the queue size (mod 9, so
// 1..256), 6 EVENT_IDX, 16-31 the ring's base index, 32-47 how far the
// driver's available index runs ahead of it. desc fills the descriptor
// table, avail the available ring's entries, extra is copied to region 0
// at fzExtra and to the start of region 1.
//
// The seed corpus in testdata/fuzz/FuzzDescriptorChain is
// descriptorChainSeeds, written by TestDescriptorChainCorpus.
func FuzzDescriptorChain(f *testing.F) {
	m, err := fuzzMemory()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, cfg uint64, desc, avail, extra []byte) {
		layout := int(cfg&3) % fzLayouts
		size := 1 << ((cfg >> 2 & 0xf) % 9)
		eventIdx := cfg>>6&1 != 0
		base := uint16(cfg >> 16)
		ahead := uint16(cfg >> 32)
		regions, mt := m.regions[layout], m.tables[layout]

		clear(m.all)
		r0 := regions[0].Bytes()
		copy(r0[fzDesc:fzDesc+descSize*size], desc)
		copy(r0[fzAvail+availSlotOff(0):fzAvail+availSlotOff(size)], avail)
		binary.LittleEndian.PutUint16(r0[fzAvail+availIdxOff:], base+ahead)
		copy(r0[fzExtra:], extra)
		if len(regions) > 1 {
			copy(regions[1].Bytes(), extra)
		}

		q, err := NewQueue(uint16(size), base, eventIdx)
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Translate(mt, Addresses{Desc: fzUser + fzDesc, Avail: fzUser + fzAvail, Used: fzUser + fzUsed}); err != nil {
			t.Fatal(err)
		}
		ring := r0[fzDesc : fzDesc+descSize*size]
		model := modelMem{regions}
		c := NewDescriptorChain(4)
		popped, pushed := 0, 0
		for {
			ok, err := q.Pop(mt, c)
			if !ok {
				if ahead > uint16(size) && err == nil {
					t.Fatalf("available index %d ahead on a ring of %d: no error", ahead, size)
				}
				if ahead <= uint16(size) && err != nil {
					t.Fatalf("Pop failed on an empty ring: %v", err)
				}
				if ahead <= uint16(size) && popped != int(ahead) {
					t.Fatalf("%d chains popped, %d were available", popped, ahead)
				}
				break
			}
			if ahead > uint16(size) {
				t.Fatalf("chain popped from a ring whose index runs %d ahead of %d entries", ahead, size)
			}
			popped++
			if popped > size {
				t.Fatalf("%d chains popped from a ring of %d with %d available", popped, size, ahead)
			}
			slot := (int(base) + popped - 1) % size
			head := binary.LittleEndian.Uint16(r0[fzAvail+availSlotOff(slot):])
			if c.Head != head {
				t.Fatalf("chain head %d, the ring holds %d", c.Head, head)
			}
			if errors.Is(err, ErrBadHead) != (int(head) >= size) {
				t.Fatalf("head %d on a ring of %d: %v", head, size, err)
			}
			checkSegments(t, regions, c, size)
			want := walkModel(model, ring, size, head)
			switch {
			case err == nil && !want.ok:
				t.Fatalf("chain at head %d accepted; the model refuses it (segments %v / %v)", head, spansOf(t, regions, c.Readable), spansOf(t, regions, c.Writable))
			case err != nil && want.ok:
				// The one known disagreement: Pop counts the indirect
				// descriptor and the ring's descriptors before it against
				// the table's own budget, so a table of queue-size entries
				// is refused (see TestIndirectTableOfQueueSize).
				if !(errors.Is(err, ErrChainTooLong) && want.indirect && want.combined > size) {
					t.Fatalf("chain at head %d refused (%v); the model accepts it: readable %v writable %v", head, err, want.readable, want.writable)
				}
			case err == nil:
				r, w := spansOf(t, regions, c.Readable), spansOf(t, regions, c.Writable)
				if fmt.Sprint(r) != fmt.Sprint(want.readable) || fmt.Sprint(w) != fmt.Sprint(want.writable) {
					t.Fatalf("chain at head %d covers readable %v writable %v; the model says %v / %v", head, r, w, want.readable, want.writable)
				}
				if sumSpans(r) != c.ReadableLen || sumSpans(w) != c.WritableLen {
					t.Fatalf("lengths %d/%d, segments hold %d/%d", c.ReadableLen, c.WritableLen, sumSpans(r), sumSpans(w))
				}
			}
			if errors.Is(err, ErrBadHead) {
				continue
			}
			used := uint32(c.WritableLen)
			if err != nil {
				used = 0
			}
			q.PushUsed(c.Head, used)
			q.NeedsNotify()
			e := r0[fzUsed+usedElemOff((int(base)+pushed)%size):]
			pushed++
			if id := binary.LittleEndian.Uint32(e[usedElemIDOff:]); id >= uint32(size) {
				t.Fatalf("used entry with id %d on a ring of %d", id, size)
			}
		}
		if ahead <= uint16(size) {
			// The probe: one readable buffer at head 0, in the next slot.
			probe := uint64(fzBase + fzExtra + 0x1000)
			copy(r0[fzDesc:], descBytes(Desc{probe, 8, 0, 0}))
			slot := int(base+ahead) % size
			binary.LittleEndian.PutUint16(r0[fzAvail+availSlotOff(slot):], 0)
			binary.LittleEndian.PutUint16(r0[fzAvail+availIdxOff:], base+ahead+1)
			ok, err := q.Pop(mt, c)
			if !ok || err != nil || c.Head != 0 || c.ReadableLen != 8 || c.WritableLen != 0 || len(c.Readable) != 1 {
				t.Fatalf("after the input, a well-formed chain: ok %v, %v, head %d, %d/%d bytes", ok, err, c.Head, c.ReadableLen, c.WritableLen)
			}
			if a, in := gpaOf(regions, c.Readable[0]); !in || a != probe {
				t.Fatalf("after the input, a well-formed chain at %#x popped as %#x (%v)", probe, a, in)
			}
			q.PushUsed(c.Head, 0)
			if got, want := binary.LittleEndian.Uint16(r0[fzUsed+usedIdxOff:]), base+uint16(pushed)+1; got != want {
				t.Fatalf("used index %d after returning the probe, want %d", got, want)
			}
			if ok, err := q.Pop(mt, c); ok || err != nil {
				t.Fatalf("a chain popped from a ring the driver left empty: %v", err)
			}
		}
		q.EnableNotification()
	})
}

func checkSegments(t *testing.T, regions []*MappedRegion, c *DescriptorChain, size int) {
	t.Helper()
	// Each descriptor (at most size in the ring and size in a table)
	// yields at most one segment per region.
	if n := len(c.Readable) + len(c.Writable); n > 2*size*len(regions) {
		t.Fatalf("%d segments from a ring of %d", n, size)
	}
	for _, segs := range [][][]byte{c.Readable, c.Writable} {
		for _, s := range segs {
			if _, ok := gpaOf(regions, s); !ok {
				t.Fatalf("segment of %d bytes outside guest memory", len(s))
			}
		}
	}
}

func spansOf(t *testing.T, regions []*MappedRegion, segs [][]byte) []span {
	var out []span
	for _, s := range segs {
		a, ok := gpaOf(regions, s)
		if !ok {
			t.Fatalf("segment of %d bytes outside guest memory", len(s))
		}
		out = appendSpan(out, a, uint64(len(s)))
	}
	return out
}

func sumSpans(s []span) uint64 {
	var n uint64
	for _, x := range s {
		n += x.n
	}
	return n
}

// fzSeed is one seed of FuzzDescriptorChain.
type fzSeed struct {
	name              string
	cfg               uint64
	desc, avail, extr []byte
}

func descBytes(ds ...Desc) []byte {
	b := make([]byte, descSize*len(ds))
	for i, d := range ds {
		e := b[descSize*i:]
		binary.LittleEndian.PutUint64(e[descAddrOff:], d.Addr)
		binary.LittleEndian.PutUint32(e[descLenOff:], d.Len)
		binary.LittleEndian.PutUint16(e[descFlagsOff:], d.Flags)
		binary.LittleEndian.PutUint16(e[descNextOff:], d.Next)
	}
	return b
}

func heads(hs ...uint16) []byte {
	b := make([]byte, availElemSize*len(hs))
	for i, h := range hs {
		binary.LittleEndian.PutUint16(b[availElemSize*i:], h)
	}
	return b
}

// fzCfg builds a cfg: layout, log2 size, event idx, base, entries ahead.
func fzCfg(layout, log2 int, eventIdx bool, base, ahead uint16) uint64 {
	c := uint64(layout) | uint64(log2)<<2 | uint64(base)<<16 | uint64(ahead)<<32
	if eventIdx {
		c |= 1 << 6
	}
	return c
}

func descriptorChainSeeds() []fzSeed {
	buf := uint64(fzBase + fzExtra + 0x1000)
	table := uint64(fzBase + fzExtra)
	r0end := uint64(fzBase + fzSlot)
	return []fzSeed{
		{"direct", fzCfg(0, 4, true, 0, 2), descBytes(
			Desc{buf, 64, DescNext, 1}, Desc{buf + 64, 128, DescWrite, 0},
			Desc{buf, 16, DescNext, 3}, Desc{buf + 16, 16, DescNext | DescWrite, 4}, Desc{buf + 32, 16, DescWrite, 0}),
			heads(0, 2), nil},
		{"indirect", fzCfg(0, 3, false, 5, 1), descBytes(Desc{table, 48, DescIndirect, 0}),
			heads(0, 0, 0, 0, 0, 0), descBytes(Desc{buf, 40, DescNext, 1}, Desc{buf + 40, 16, DescNext, 2}, Desc{buf + 64, 100, DescWrite, 0})},
		{"loop", fzCfg(0, 3, false, 0, 1), descBytes(Desc{buf, 8, DescNext, 1}, Desc{buf, 8, DescNext, 0}), heads(0), nil},
		{"bad-head-and-next", fzCfg(0, 2, true, 0xfffe, 3), descBytes(Desc{buf, 8, DescNext, 9}), heads(0, 7, 0), nil},
		{"runaway", fzCfg(0, 2, false, 0, 100), descBytes(Desc{buf, 8, 0, 0}), heads(0), nil},
		{"straddle-contiguous", fzCfg(1, 2, false, 0, 2), descBytes(
			Desc{r0end - 8, 24, DescNext, 1}, Desc{buf, 16, DescWrite, 0}, Desc{r0end - 16, 48, DescIndirect, 0}),
			heads(0, 2), descBytes(Desc{buf, 8, DescNext, 1}, Desc{buf + 8, 8, DescNext, 2}, Desc{buf + 16, 8, DescWrite, 0})},
		{"straddle-hole", fzCfg(2, 2, false, 0, 2), descBytes(
			Desc{r0end - 8, 24, DescNext, 1}, Desc{buf, 16, DescWrite, 0}, Desc{r0end - 16, 48, DescIndirect, 0}),
			heads(0, 2), descBytes(Desc{buf, 8, 0, 0})},
		{"nested-and-next-indirect", fzCfg(0, 2, false, 0, 2), descBytes(
			Desc{table, 16, DescIndirect, 0}, Desc{table, 16, DescIndirect | DescNext, 2}, Desc{buf, 8, 0, 0}),
			heads(0, 1), descBytes(Desc{table, 16, DescIndirect, 0})},
		{"write-then-read-zero-len", fzCfg(0, 2, false, 0, 2), descBytes(
			Desc{buf, 8, DescWrite | DescNext, 1}, Desc{buf, 8, 0, 0}, Desc{1 << 40, 0, DescNext, 3}, Desc{buf, 0, DescWrite, 0}),
			heads(0, 2), nil},
		{"outside-and-wrap", fzCfg(2, 2, false, 0, 3), descBytes(
			Desc{1 << 40, 8, 0, 0}, Desc{^uint64(0) - 4, 8, 0, 0}, Desc{fzHigh + fzSlot - 4, 8, 0, 0}),
			heads(0, 1, 2), nil},
		{"indirect-queue-size", fzCfg(0, 2, false, 0, 1), descBytes(Desc{table, 64, DescIndirect, 0}),
			heads(0), descBytes(Desc{buf, 8, DescNext, 1}, Desc{buf, 8, DescNext, 2}, Desc{buf, 8, DescNext, 3}, Desc{buf, 8, DescWrite, 0})},
	}
}

// TestDescriptorChainCorpus checks that testdata/fuzz/FuzzDescriptorChain
// holds descriptorChainSeeds, and with VIRTQUEUE_WRITE_CORPUS=1 writes them.
func TestDescriptorChainCorpus(t *testing.T) {
	write := os.Getenv("VIRTQUEUE_WRITE_CORPUS") == "1"
	dir := filepath.Join("testdata", "fuzz", "FuzzDescriptorChain")
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range descriptorChainSeeds() {
		path := filepath.Join(dir, "seed-"+s.name)
		body := fmt.Sprintf("go test fuzz v1\nuint64(%d)\n[]byte(%q)\n[]byte(%q)\n[]byte(%q)\n", s.cfg, s.desc, s.avail, s.extr)
		if write {
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (regenerate with VIRTQUEUE_WRITE_CORPUS=1)", err)
		}
		if string(got) != body {
			t.Errorf("%s is stale (regenerate with VIRTQUEUE_WRITE_CORPUS=1)", path)
		}
	}
}

// TestIndirectTableOfQueueSize: an indirect table may hold as many
// descriptors as the queue (the spec bounds a chain by the queue size; the
// descriptor that points at the table is not part of the chain). Linux's
// virtio-fs caps a request at queue size - FUSE_HEADER_OVERHEAD (4) pages,
// so its largest WRITE is exactly such a table: header, write_in, the
// pages, out header, write_out.
func TestIndirectTableOfQueueSize(t *testing.T) {
	for _, size := range []uint16{4, 16, 128} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			mt, d, q := newPair(t, size, false)
			bufs := make([]Buffer, size)
			for i := range bufs {
				bufs[i] = Buffer{testBuffer + uint64(i)*8, 8}
			}
			head, err := d.AddIndirectChain(testBuffer+0x8000, bufs, int(size)-2)
			if err != nil {
				t.Fatal(err)
			}
			c := NewDescriptorChain(4)
			ok, err := q.Pop(mt, c)
			if !ok || err != nil {
				t.Fatalf("indirect table of %d entries on a queue of %d: ok %v, %v", size, size, ok, err)
			}
			if c.Head != head || c.ReadableLen != 8*uint64(size-2) || c.WritableLen != 16 {
				t.Fatalf("head %d readable %d writable %d", c.Head, c.ReadableLen, c.WritableLen)
			}
		})
	}
}
