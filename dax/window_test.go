package dax

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	kib   = 1 << 10
	mib   = 1 << 20
	chunk = 2 * mib // what the Linux guest maps at a time
)

// vmm plays the VMM's side of a Channel. With shmem it behaves as QEMU
// 11.1's SHMEM_MAP: a range longer than its file (or an empty file) is
// refused, mapping over a mapping is refused, and an unmap must name one
// mapping exactly. Without, it behaves as a plain mmap (legacy FS_MAP).
type vmm struct {
	shmem bool
	maps  map[uint64]vmmMap // by window offset
	calls int
}

type vmmMap struct {
	length, foff uint64
	fd           int
	rw           bool
}

func newVMM(shmem bool) *vmm { return &vmm{shmem: shmem, maps: map[uint64]vmmMap{}} }

func (v *vmm) Map(fd int, foff, moff, length uint64, rw bool) error {
	v.calls++
	if v.shmem {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if st.Size == 0 {
			return fmt.Errorf("empty file passed to SHMEM_MAP (QEMU would extend it)")
		}
		if uint64(st.Size) < foff+length {
			return fmt.Errorf("backing store size %#x is too small for %#x+%#x", st.Size, foff, length)
		}
		for off, m := range v.maps {
			if off < moff+length && moff < off+m.length {
				return fmt.Errorf("%#x+%#x overlaps %#x+%#x", moff, length, off, m.length)
			}
		}
	} else {
		v.punch(moff, length)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		return err
	}
	v.maps[moff] = vmmMap{length: length, foff: foff, fd: dup, rw: rw}
	return nil
}

func (v *vmm) Unmap(moff, length uint64) error {
	v.calls++
	if v.shmem {
		m, ok := v.maps[moff]
		if !ok || m.length != length {
			return fmt.Errorf("no mapping %#x+%#x", moff, length)
		}
		unix.Close(m.fd)
		delete(v.maps, moff)
		return nil
	}
	v.punch(moff, length)
	return nil
}

// punch cuts [moff, moff+length) out of the legacy mappings.
func (v *vmm) punch(moff, length uint64) {
	end := moff + length
	for off, m := range v.maps {
		mEnd := off + m.length
		if mEnd <= moff || off >= end {
			continue
		}
		delete(v.maps, off)
		if off < moff {
			d, _ := unix.Dup(m.fd)
			v.maps[off] = vmmMap{length: moff - off, foff: m.foff, fd: d, rw: m.rw}
		}
		if mEnd > end {
			d, _ := unix.Dup(m.fd)
			v.maps[end] = vmmMap{length: mEnd - end, foff: m.foff + end - off, fd: d, rw: m.rw}
		}
		unix.Close(m.fd)
	}
}

func (v *vmm) MapsPastEOF() bool         { return !v.shmem }
func (v *vmm) ReadsNeedWritableFd() bool { return v.shmem }

// sorted returns the VMM's mappings as [offset, length, file offset].
func (v *vmm) sorted() [][3]uint64 {
	var out [][3]uint64
	for off, m := range v.maps {
		out = append(out, [3]uint64{off, m.length, m.foff})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// hostFiles serves files of a directory as nodes 2, 3, ... in the order
// they were added; node 1 is the directory.
type hostFiles struct {
	dir   string
	names []string
	dax   map[uint64]bool
}

func (h *hostFiles) add(t *testing.T, size int64) (uint64, string) {
	t.Helper()
	p := filepath.Join(h.dir, fmt.Sprint("f", len(h.names)))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i/4096 + i)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	h.names = append(h.names, p)
	return uint64(len(h.names) + 1), p
}

func (h *hostFiles) MappingFd(node uint64, writable bool) (int, syscall.Errno) {
	if node == 1 {
		return -1, syscall.EISDIR
	}
	if node < 2 || node-2 >= uint64(len(h.names)) {
		return -1, syscall.EBADF
	}
	fd, err := unix.Open(h.names[node-2], unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err.(syscall.Errno)
	}
	return fd, 0
}

func (h *hostFiles) InodeDAX(node, parent uint64) bool { return h.dax[node] }

func newTestWindow(t *testing.T, shmem bool) (*Window, *vmm, *hostFiles) {
	t.Helper()
	v := newVMM(shmem)
	h := &hostFiles{dir: t.TempDir()}
	w, err := NewWindow(64*mib, 4096, v, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.Reset(true)
		if len(v.maps) != 0 {
			t.Errorf("Reset left %d VMM mappings", len(v.maps))
		}
		if w.Clamped() {
			t.Errorf("Reset left the window clamped")
		}
	})
	return w, v, h
}

// agree checks that the books and the VMM hold the same mappings.
func agree(t *testing.T, w *Window, v *vmm) {
	t.Helper()
	var books [][3]uint64
	for _, m := range w.Mapped() {
		books = append(books, [3]uint64{m[0], m[1], m[2]})
	}
	if got := v.sorted(); fmt.Sprint(got) != fmt.Sprint(books) {
		t.Fatalf("books %x, VMM %x", books, got)
	}
}

func grow(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// TestDAXSetupClamp maps the 2 MiB ranges of files of various sizes through
// each transport: SHMEM gets only what the file covers, never a partial
// last page, never an empty file.
func TestDAXSetupClamp(t *testing.T) {
	for _, tc := range []struct {
		size       int64
		foff       uint64
		shmem      bool
		wantErr    syscall.Errno
		wantMapped uint64
	}{
		{6 * mib, 4 * mib, true, 0, chunk},
		{3 * mib, 2 * mib, true, 0, mib},
		{3*mib + 4096, 2 * mib, true, 0, mib + 4096},
		{4096, 0, true, 0, 4096},
		{3*mib + 100, 0, true, 0, chunk},               // the range is whole
		{3*mib + 100, 2 * mib, true, ErrUnmappable, 0}, // partial last page
		{100, 0, true, ErrUnmappable, 0},               // only a partial page
		{0, 0, true, ErrUnmappable, 0},                 // empty file
		{2 * mib, 2 * mib, true, ErrUnmappable, 0},     // nothing of the range
		{3*mib + 100, 2 * mib, false, 0, chunk},        // legacy maps past EOF
		{0, 0, false, 0, chunk},                        // even an empty file
		{3 * mib, 2 * mib, false, 0, chunk},
	} {
		name := fmt.Sprintf("size %#x at %#x shmem %v", tc.size, tc.foff, tc.shmem)
		t.Run(name, func(t *testing.T) {
			w, v, h := newTestWindow(t, tc.shmem)
			node, _ := h.add(t, tc.size)
			e := w.Setup(node, tc.foff, chunk, FlagRead, 8*mib)
			if e != tc.wantErr {
				t.Fatalf("Setup: %v, want %v", e, tc.wantErr)
			}
			agree(t, w, v)
			if e != 0 {
				if v.calls != 0 || len(w.Extents()) != 0 {
					t.Fatalf("a refused setup reached the VMM (%d calls) or the books %+v", v.calls, w.Extents())
				}
				return
			}
			x := w.Extents()
			if len(x) != 1 || x[0].Mapped != tc.wantMapped || x[0].Length != chunk {
				t.Fatalf("extents %+v, want %#x of %#x mapped", x, tc.wantMapped, chunk)
			}
			if w.Clamped() != (tc.wantMapped < chunk) {
				t.Fatalf("Clamped %v", w.Clamped())
			}
			// Upgrade to read-write, then remove as the guest does.
			if e := w.Setup(node, tc.foff, chunk, FlagRead|FlagWrite, 8*mib); e != 0 {
				t.Fatalf("upgrade: %v", e)
			}
			agree(t, w, v)
			if e := w.Remove(8*mib, chunk); e != 0 {
				t.Fatalf("Remove: %v", e)
			}
			agree(t, w, v)
			if len(v.maps) != 0 || w.Clamped() {
				t.Fatalf("after remove: VMM %x, clamped %v", v.sorted(), w.Clamped())
			}
		})
	}
}

// TestDAXGrow grows a file under a clamped mapping: each Grow adds a piece
// behind the mapped ones (the mapped part is never unmapped), only whole
// pages are mapped, and a remove unmaps each piece exactly.
func TestDAXGrow(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	node, path := h.add(t, mib)
	other, _ := h.add(t, 6*mib)
	must := func(what string, e syscall.Errno) {
		t.Helper()
		if e != 0 {
			t.Fatalf("%s: %v", what, e)
		}
	}
	must("setup", w.Setup(node, 0, chunk, FlagRead, 0))
	must("setup other", w.Setup(other, 0, chunk, FlagRead, chunk))
	if !w.Clamped() {
		t.Fatal("a 1 MiB file under a 2 MiB range is not clamped")
	}
	must("grow unchanged", w.Grow(node))
	must("grow other node", w.Grow(other))
	if v.calls != 2 {
		t.Fatalf("Grow without growth asked the VMM: %d calls", v.calls)
	}
	grow(t, path, mib+512*kib)
	must("grow", w.Grow(node))
	agree(t, w, v)
	if x := w.Extents()[0]; x.Mapped != mib+512*kib || x.Pieces != 2 {
		t.Fatalf("after growth to 1.5 MiB: %+v", x)
	}
	grow(t, path, mib+768*kib+100) // a partial last page: whole pages only
	must("grow partial", w.Grow(node))
	agree(t, w, v)
	if x := w.Extents()[0]; x.Mapped != mib+768*kib || x.Pieces != 3 {
		t.Fatalf("after growth to 1.75 MiB + 100: %+v", x)
	}
	grow(t, path, 5*mib)
	must("grow past the range", w.Grow(node))
	agree(t, w, v)
	if x := w.Extents()[0]; x.Mapped != chunk || x.Pieces != 4 || w.Clamped() {
		t.Fatalf("after growth past the range: %+v, clamped %v", x, w.Clamped())
	}
	// The guest's remove names its 2 MiB range; the VMM gets each piece.
	must("remove", w.Remove(0, chunk))
	agree(t, w, v)
	if len(v.maps) != 1 {
		t.Fatalf("VMM mappings left: %x", v.sorted())
	}
}

// TestDAXExtending checks which growths of a file under a clamped mapping
// are refused: those that leave a partial last page inside the guest's
// range beyond what is mapped.
func TestDAXExtending(t *testing.T) {
	w, _, h := newTestWindow(t, true)
	node, _ := h.add(t, mib)
	free, _ := h.add(t, mib) // not mapped
	if e := w.Extending(node, mib+100); e != 0 {
		t.Fatalf("Extending with nothing clamped: %v", e)
	}
	if e := w.Setup(node, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	for _, tc := range []struct {
		node, end uint64
		want      syscall.Errno
	}{
		{node, mib + 100, ErrUnmappable},
		{node, chunk - 1, ErrUnmappable},
		{node, mib + 4096, 0},  // whole pages
		{node, mib - 100, 0},   // a shrink
		{node, 512 * kib, 0},   // a shrink to whole pages
		{node, chunk + 100, 0}, // the partial page is in the next range
		{node, 3*mib + 1, 0},   // likewise
		{free, mib + 100, 0},   // another file
	} {
		if e := w.Extending(tc.node, tc.end); e != tc.want {
			t.Errorf("Extending(%d, %#x) = %v, want %v", tc.node, tc.end, e, tc.want)
		}
	}
}

// TestDAXRemoveClamped removes part of clamped ranges, as a guest other than
// Linux may: what is left is mapped again as far as the file goes, stays
// clamped where it does not, and grows later.
func TestDAXRemoveClamped(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	node, path := h.add(t, mib)
	if e := w.Setup(node, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	grow(t, path, mib+256*kib)
	w.Grow(node)
	// Cut a hole in the mapped part: the left keeps 512 KiB, the right
	// [768 KiB, 2 MiB) maps [768 KiB, 1.25 MiB) of the file.
	if e := w.Remove(512*kib, 256*kib); e != 0 {
		t.Fatal(e)
	}
	agree(t, w, v)
	x := w.Extents()
	if len(x) != 2 || x[0].Mapped != 512*kib || x[0].Length != 512*kib ||
		x[1].Offset != 768*kib || x[1].Mapped != 512*kib || x[1].Length != chunk-768*kib {
		t.Fatalf("after the hole: %+v", x)
	}
	// A remove beyond the mapped part of a clamped range unmaps nothing
	// of the file but shortens the range.
	if e := w.Remove(mib+512*kib, 512*kib); e != 0 {
		t.Fatal(e)
	}
	agree(t, w, v)
	grow(t, path, 3*mib)
	w.Grow(node)
	agree(t, w, v)
	x = w.Extents()
	if len(x) != 2 || x[1].Mapped != x[1].Length || x[1].Length != mib+512*kib-768*kib || w.Clamped() {
		t.Fatalf("after growth: %+v clamped %v", x, w.Clamped())
	}
	// A file shrunk under a range: the remainder maps nothing and waits.
	grow(t, path, 256*kib)
	if e := w.Remove(0, 256*kib); e != 0 {
		t.Fatal(e)
	}
	agree(t, w, v)
	if !w.Clamped() {
		t.Fatal("a remainder past the end of the file is not clamped")
	}
	grow(t, path, 3*mib)
	w.Grow(node)
	agree(t, w, v)
	if w.Clamped() {
		t.Fatalf("not grown back: %+v", w.Extents())
	}
}

// TestDAXBadSetup: every malformed request is refused before the VMM hears
// of it.
func TestDAXBadSetup(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	node, _ := h.add(t, 4*mib)
	for _, tc := range []struct {
		name                     string
		node, foff, length, moff uint64
		want                     syscall.Errno
	}{
		{"past the window", node, 0, chunk, 64 * mib, syscall.EINVAL},
		{"straddling the end", node, 0, chunk, 63 * mib, syscall.EINVAL},
		{"unaligned window offset", node, 0, chunk, 100, syscall.EINVAL},
		{"unaligned file offset", node, 100, chunk, 0, syscall.EINVAL},
		{"unaligned length", node, 0, 100, 0, syscall.EINVAL},
		{"zero length", node, 0, 0, 0, syscall.EINVAL},
		{"huge length", node, 0, 1 << 62, 0, syscall.EINVAL},
		{"file offset overflow", node, ^uint64(0) &^ 4095, chunk, 0, syscall.EINVAL},
		{"file offset past int64", node, 1 << 63, chunk, 0, syscall.EINVAL},
		{"directory", 1, 0, chunk, 0, syscall.EISDIR},
		{"no such node", 99, 0, chunk, 0, syscall.EBADF},
		{"past the end of the file", node, 4 * mib, chunk, 0, ErrUnmappable},
	} {
		if e := w.Setup(tc.node, tc.foff, tc.length, FlagRead, tc.moff); e != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, e, tc.want)
		}
	}
	if v.calls != 0 {
		t.Errorf("bad requests reached the VMM %d times", v.calls)
	}
	for _, r := range [][2]uint64{{0, 0}, {64 * mib, 4096}, {63 * mib, chunk}} {
		if e := w.Remove(r[0], r[1]); e != syscall.EINVAL {
			t.Errorf("Remove %#x+%#x: %v", r[0], r[1], e)
		}
	}
}

// TestDAXFileDeletedWhileMapped: the window holds its own descriptor; the
// host deleting the file changes nothing until the guest removes the
// range.
func TestDAXFileDeletedWhileMapped(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	node, path := h.add(t, mib)
	if e := w.Setup(node, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if e := w.Grow(node); e != 0 {
		t.Fatalf("Grow of a deleted file: %v", e)
	}
	if e := w.Setup(node, 0, chunk, FlagRead|FlagWrite, 0); e != syscall.ENOENT {
		t.Fatalf("upgrade of a deleted file: %v, want ENOENT", e)
	}
	agree(t, w, v)
	if e := w.Remove(0, chunk); e != 0 {
		t.Fatal(e)
	}
	agree(t, w, v)
}

// TestDAXClampedCostsNothing: with nothing clamped, the checks the server
// makes on every request allocate nothing.
func TestDAXClampedCostsNothing(t *testing.T) {
	w, _, h := newTestWindow(t, true)
	node, _ := h.add(t, 4*mib)
	if e := w.Setup(node, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	if n := testing.AllocsPerRun(100, func() {
		if w.Clamped() || w.Grow(node) != 0 || w.Extending(node, 5*mib+1) != 0 {
			t.Fatal("clamped")
		}
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// TestDAXConcurrent maps, removes and grows from several goroutines at once
// while the host grows the files (run it with -race): the books must end
// agreeing with the VMM.
func TestDAXConcurrent(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	var vmu syncMutexChannel
	vmu.ch = v
	w.ch = &vmu
	var nodes []uint64
	var paths []string
	for range 4 {
		n, p := h.add(t, mib)
		nodes, paths = append(nodes, n), append(paths, p)
	}
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 200 {
				node := nodes[(g+i)%len(nodes)]
				moff := uint64(g*4+i%4) * chunk
				switch i % 5 {
				case 0, 1:
					w.Setup(node, 0, chunk, FlagRead|uint64(i%2), moff)
				case 2:
					w.Remove(moff, chunk)
				case 3:
					w.Grow(node)
				case 4:
					w.Extending(node, mib+4096*uint64(i)+1)
					if i%20 == 4 {
						os.Truncate(paths[g], int64(mib+4096*i))
					}
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
	agree(t, w, v)
	if len(vmu.refused) != 0 {
		t.Errorf("the VMM refused %d requests, first: %v", len(vmu.refused), vmu.refused[0])
	}
}

// syncMutexChannel serialises a vmm for TestConcurrent, as the back-end
// channel does.
type syncMutexChannel struct {
	mu      sync.Mutex
	ch      *vmm
	refused []error
}

func (c *syncMutexChannel) Map(fd int, foff, moff, length uint64, rw bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.ch.Map(fd, foff, moff, length, rw)
	if err != nil {
		c.refused = append(c.refused, err)
	}
	return err
}

func (c *syncMutexChannel) Unmap(moff, length uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.ch.Unmap(moff, length)
	if err != nil {
		c.refused = append(c.refused, err)
	}
	return err
}

func (c *syncMutexChannel) MapsPastEOF() bool         { return false }
func (c *syncMutexChannel) ReadsNeedWritableFd() bool { return false }

// TestDAXGrowBounded: a guest that grows a file a page at a time under a
// clamped mapping makes a VMM mapping per page; past twice the mapping
// bound Grow refuses with ErrFull and the mapping stays clamped.
func TestDAXGrowBounded(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	w.SetLimits(2, 0) // at most 4 VMM mappings
	node, path := h.add(t, 4*kib)
	if e := w.Setup(node, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	var e syscall.Errno
	size := int64(4 * kib)
	for k := 0; k < 16 && e == 0; k++ {
		size += 4 * kib
		grow(t, path, size)
		e = w.Grow(node)
	}
	if e != ErrFull {
		t.Fatalf("growth a page at a time: %v, want ErrFull", e)
	}
	agree(t, w, v)
	if x := w.Extents()[0]; x.Pieces != 4 || !w.Clamped() {
		t.Fatalf("after refused growth: %+v, clamped %v", x, w.Clamped())
	}
}
