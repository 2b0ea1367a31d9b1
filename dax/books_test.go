package dax

import (
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// What a hostile guest can make of the books: these tests use only the
// window's request API, so that they run against any version of it.

// nullVMM accepts every map and unmap (or refuses them all with refuse)
// and keeps nothing: it costs the tests nothing per mapping.
type nullVMM struct {
	pastEOF       bool
	maps, unmaps  int
	refuse        error
	mapped, freed uint64 // bytes
}

func (v *nullVMM) Map(fd int, foff, moff, length uint64, rw bool) error {
	v.maps++
	if v.refuse != nil {
		return v.refuse
	}
	v.mapped += length
	return nil
}

func (v *nullVMM) Unmap(moff, length uint64) error {
	v.unmaps++
	v.freed += length
	return nil
}

func (v *nullVMM) MapsPastEOF() bool         { return v.pastEOF }
func (v *nullVMM) ReadsNeedWritableFd() bool { return false }

// dupFiles serves every node as one file, with a new descriptor each
// time as the host filesystem does: a duplicate of a read-only or a
// read-write one, which allocates nothing. gate, when set, runs first.
type dupFiles struct {
	ro, rw int
	calls  atomic.Int64
	gate   func(node uint64, writable bool)
}

func newDupFiles(t *testing.T, size int64) *dupFiles {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &dupFiles{}
	var err error
	if f.ro, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	if f.rw, err = unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(f.ro); unix.Close(f.rw) })
	return f
}

func (f *dupFiles) MappingFd(node uint64, writable bool) (int, syscall.Errno) {
	f.calls.Add(1)
	if f.gate != nil {
		f.gate(node, writable)
	}
	fd := f.ro
	if writable {
		fd = f.rw
	}
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, err.(syscall.Errno)
	}
	return d, 0
}

func (f *dupFiles) InodeDAX(node, parent uint64) bool { return false }

// openFds counts the process's descriptors.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

const page = 4096

// TestDAXBooksAllocs holds 10,000 mappings and measures what one more
// SETUPMAPPING and REMOVEMAPPING cost: nothing in steady state. The books
// were copied whole on every request (a REMOVEMAPPING of an empty range
// allocated 1.4 MB with 4,096 held).
func TestDAXBooksAllocs(t *testing.T) {
	const held = 10000
	for _, pastEOF := range []bool{true, false} {
		v := &nullVMM{pastEOF: pastEOF}
		f := newDupFiles(t, 64*mib)
		w, err := NewWindow(64*mib, page, v, f)
		if err != nil {
			t.Fatal(err)
		}
		for i := range held {
			if e := w.Setup(2, uint64(i)*page, page, FlagRead, uint64(i)*page); e != 0 {
				t.Fatalf("setup %d: %v", i, e)
			}
		}
		free := uint64(held+100) * page
		for name, fn := range map[string]func(){
			"SETUPMAPPING then REMOVEMAPPING of a free range": func() {
				if e := w.Setup(2, 0, page, FlagRead, free); e != 0 {
					t.Fatal(e)
				}
				if e := w.Remove(free, page); e != 0 {
					t.Fatal(e)
				}
			},
			"REMOVEMAPPING of an empty range": func() {
				if e := w.Remove(free, 2*mib); e != 0 {
					t.Fatal(e)
				}
			},
			"SETUPMAPPING over a held range": func() {
				if e := w.Setup(2, 5000*page, page, FlagRead, 5000*page); e != 0 {
					t.Fatal(e)
				}
			},
			"REMOVEMAPPING then SETUPMAPPING of a held range": func() {
				if e := w.Remove(3000*page, page); e != 0 {
					t.Fatal(e)
				}
				if e := w.Setup(2, 3000*page, page, FlagRead, 3000*page); e != 0 {
					t.Fatal(e)
				}
			},
		} {
			fn() // warm up
			if n := testing.AllocsPerRun(100, fn); n != 0 {
				t.Errorf("past EOF %v: %s with %d mappings held: %v allocations", pastEOF, name, held, n)
			} else {
				t.Logf("past EOF %v: %s with %d mappings held: 0 allocations", pastEOF, name, held)
			}
		}
		if n := len(w.Extents()); n != held {
			t.Errorf("%d extents, want %d", n, held)
		}
		w.Reset(true)
	}
}

// TestDAXOneFdPerNode maps 10,000 ranges of one file: the window holds one
// descriptor of it, a second one while a writable mapping needs it, and
// none once everything is removed. It held one per mapping.
func TestDAXOneFdPerNode(t *testing.T) {
	const n = 10000
	v := &nullVMM{}
	f := newDupFiles(t, 64*mib)
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	base := openFds(t)
	for i := range n {
		if e := w.Setup(7, uint64(i%16)*page, page, FlagRead, uint64(i)*page); e != 0 {
			t.Fatalf("setup %d: %v", i, e)
		}
	}
	got := openFds(t) - base
	t.Logf("%d read-only mappings of one file: %d descriptors held, %d opened", n, got, f.calls.Load())
	if got != 1 {
		t.Fatalf("%d read-only mappings of one file hold %d descriptors, want 1", n, got)
	}
	// Writable mappings of the node add one read-write descriptor,
	// whatever their number.
	for i := range 100 {
		if e := w.Setup(7, 0, page, FlagRead|FlagWrite, uint64(n+i)*page); e != 0 {
			t.Fatal(e)
		}
	}
	if got := openFds(t) - base; got != 2 {
		t.Fatalf("read-only and writable mappings hold %d descriptors, want 2", got)
	}
	if e := w.Remove(uint64(n)*page, 100*page); e != 0 {
		t.Fatal(e)
	}
	if got := openFds(t) - base; got != 1 {
		t.Fatalf("after the writable mappings went: %d descriptors, want 1 (the read-write one is closed)", got)
	}
	for off := uint64(0); off < n*page; off += 256 * page {
		if e := w.Remove(off, min(256*page, n*page-off)); e != 0 {
			t.Fatal(e)
		}
	}
	if got := openFds(t) - base; got != 0 || len(w.Extents()) != 0 {
		t.Fatalf("after removing all: %d descriptors, %d extents", got, len(w.Extents()))
	}
	if c := f.calls.Load(); c > 3 {
		t.Errorf("the file was opened %d times", c)
	}
}

// TestDAXSetupRacesReset: a SETUPMAPPING whose file is being opened when
// DESTROY resets the window must leave nothing behind, neither in the VMM
// nor a descriptor: the next session does not reset again.
func TestDAXSetupRacesReset(t *testing.T) {
	v := newVMM(true)
	f := newDupFiles(t, 4*mib)
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	f.gate = func(uint64, bool) {
		entered <- struct{}{}
		<-release
	}
	base := openFds(t)
	done := make(chan syscall.Errno)
	go func() { done <- w.Setup(2, 0, chunk, FlagRead, 0) }()
	<-entered
	w.Reset(true) // DESTROY on another queue
	close(release)
	e := <-done
	t.Logf("the setup in flight across Reset: %v", e)
	if e == 0 {
		t.Errorf("the setup in flight across Reset succeeded")
	}
	if x := w.Extents(); len(x) != 0 {
		t.Errorf("the books hold %+v after Reset", x)
	}
	if len(v.maps) != 0 {
		t.Errorf("the VMM holds %x after Reset", v.sorted())
	}
	if got := openFds(t) - base; got != 0 {
		t.Errorf("%d descriptors left after Reset", got)
	}
	// The window serves the next session.
	f.gate = nil
	if e := w.Setup(2, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	w.Reset(true)
}

// TestDAXSetupRacesRemove: while a writable SETUPMAPPING opens its file,
// another queue removes the node's last mapping (closing its read-only
// descriptor) and a second writable setup of the node opens its own: the
// first must neither use a closed descriptor nor keep a second one.
func TestDAXSetupRacesRemove(t *testing.T) {
	v := newVMM(true)
	f := newDupFiles(t, 4*mib)
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	base := openFds(t)
	if e := w.Setup(2, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	f.gate = func(uint64, bool) {
		if first.CompareAndSwap(false, true) {
			entered <- struct{}{}
			<-release
		}
	}
	done := make(chan syscall.Errno)
	go func() { done <- w.Setup(2, 0, chunk, FlagRead|FlagWrite, chunk) }()
	<-entered
	if e := w.Remove(0, chunk); e != 0 {
		t.Fatal(e)
	}
	if e := w.Setup(2, 0, chunk, FlagRead|FlagWrite, 2*chunk); e != 0 {
		t.Fatal(e)
	}
	close(release)
	if e := <-done; e != 0 {
		t.Fatalf("the setup that opened its file meanwhile: %v", e)
	}
	agree(t, w, v)
	if x := w.Extents(); len(x) != 2 {
		t.Fatalf("books %+v", x)
	}
	for moff, m := range v.maps {
		if !m.rw {
			t.Errorf("the writable mapping at %#x was made read-only", moff)
		}
	}
	// The VMM holds its own duplicates; the window one descriptor.
	if got := openFds(t) - base - len(v.maps); got != 1 {
		t.Errorf("the window holds %d descriptors, want 1", got)
	}
	w.Reset(true)
	if got := openFds(t) - base; got != 0 {
		t.Errorf("%d descriptors left after Reset", got)
	}
}

// TestDAXRemoveBounds: a REMOVEMAPPING must be aligned as a mapping is,
// and inside the window; an unaligned one cut mappings at offsets the VMM
// cannot map again, and lost what lay beside the range.
func TestDAXRemoveBounds(t *testing.T) {
	for _, shmem := range []bool{true, false} {
		w, v, h := newTestWindow(t, shmem)
		node, _ := h.add(t, 4*mib)
		if e := w.Setup(node, 0, chunk, FlagRead, 0); e != 0 {
			t.Fatal(e)
		}
		calls := v.calls
		for _, r := range [][2]uint64{
			{100, page},
			{page, 100},
			{page + 1, page - 1},
			{64*mib - page, ^uint64(0) &^ (page - 1)}, // the end wraps
			{page, ^uint64(0) - page + 1},             // likewise
			{^uint64(0) &^ (page - 1), 2 * page},      // past the window
		} {
			if e := w.Remove(r[0], r[1]); e != syscall.EINVAL {
				t.Errorf("shmem %v: Remove(%#x, %#x) = %v, want EINVAL", shmem, r[0], r[1], e)
			}
		}
		if v.calls != calls {
			t.Errorf("shmem %v: refused removes reached the VMM %d times", shmem, v.calls-calls)
		}
		agree(t, w, v)
		if x := w.Extents(); len(x) != 1 || x[0].Length != chunk || x[0].Mapped != chunk {
			t.Errorf("shmem %v: books after refused removes: %+v", shmem, x)
		}
	}
}

// TestDAXDefaultNodeLimit: by default a 64 MiB window maps at most 1,024
// distinct files at once; the next gets ENOSPC and the VMM never hears of
// it. Every file was mapped, each with its own descriptors.
func TestDAXDefaultNodeLimit(t *testing.T) {
	v := &nullVMM{pastEOF: true}
	f := newDupFiles(t, mib)
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Reset(true)
	base := openFds(t)
	const limit = 1024
	for i := range uint64(limit) {
		if e := w.Setup(10+i, 0, page, FlagRead, i*page); e != 0 {
			t.Fatalf("file %d: %v", i, e)
		}
	}
	maps := v.maps
	e := w.Setup(10+limit, 0, page, FlagRead, limit*page)
	if e != syscall.ENOSPC {
		t.Errorf("file %d: %v, want ENOSPC", limit+1, e)
	}
	if v.maps != maps || len(w.Extents()) != limit {
		t.Errorf("the refused setup reached the VMM or the books")
	}
	if got := openFds(t) - base; got != limit {
		t.Errorf("%d descriptors for %d files", got, limit)
	}
	// Another mapping of a file held is no new file.
	if e := w.Setup(10, 0, page, FlagRead, (limit+1)*page); e != 0 {
		t.Errorf("a mapping of a held file at the bound: %v", e)
	}
}

// TestDAXDefaultMappingLimit: a 512 MiB window has room for 131,072
// mappings of 4 KiB; by default it keeps 65,536.
func TestDAXDefaultMappingLimit(t *testing.T) {
	v := &nullVMM{pastEOF: true}
	f := newDupFiles(t, mib)
	w, err := NewWindow(512*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Reset(true)
	base := openFds(t)
	start := time.Now()
	const limit = 1 << 16
	for i := range uint64(limit) {
		if e := w.Setup(2, 0, page, FlagRead, i*page); e != 0 {
			t.Fatalf("mapping %d: %v", i, e)
		}
		if i%4096 == 0 && time.Since(start) > 30*time.Second {
			t.Fatalf("%d mappings took %v", i, time.Since(start))
		}
	}
	t.Logf("%d mappings in %v", limit, time.Since(start))
	if e := w.Setup(2, 0, page, FlagRead, limit*page); e != syscall.ENOSPC {
		t.Errorf("mapping %d: %v, want ENOSPC", limit+1, e)
	}
	// Replacing a mapping at the bound is allowed.
	if e := w.Setup(2, page, page, FlagRead|FlagWrite, 100*page); e != 0 {
		t.Errorf("replacing a mapping at the bound: %v", e)
	}
	if got := openFds(t) - base; got > 2 {
		t.Errorf("%d descriptors", got)
	}
}

// TestDAXAlignmentPage: a window's alignment is at least the page size
// (the VMM maps whole pages), and INIT says so.
func TestDAXAlignmentPage(t *testing.T) {
	w, err := NewWindow(64*mib, 512, &nullVMM{}, newDupFiles(t, mib))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w.AlignmentLog2(), uint16(12); os.Getpagesize() == 4096 && got != want {
		t.Errorf("AlignmentLog2 %d, want %d", got, want)
	}
	if e := w.Setup(2, 0, 512, FlagRead, 0); e != syscall.EINVAL {
		t.Errorf("a mapping of 512 bytes: %v, want EINVAL", e)
	}
	if e := w.Setup(2, 512, page, FlagRead, 0); e != syscall.EINVAL {
		t.Errorf("a mapping at file offset 512: %v, want EINVAL", e)
	}
}

// BenchmarkDAXBooks measures SETUPMAPPING and REMOVEMAPPING with 10,000
// mappings held (go test -run - -bench DAXBooks -benchmem ./dax).
func BenchmarkDAXBooks(b *testing.B) {
	const held = 10000
	v := &nullVMM{pastEOF: true}
	f := &dupFiles{}
	var err error
	if f.ro, err = unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		b.Fatal(err)
	}
	defer unix.Close(f.ro)
	f.rw = f.ro
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Reset(true)
	for i := range held {
		if e := w.Setup(2, 0, page, FlagRead, uint64(i)*page); e != 0 {
			b.Fatal(e)
		}
	}
	free := uint64(held+100) * page
	b.Run("setup", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Setup(2, 0, page, FlagRead, free)
		}
	})
	b.Run("remove", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Remove(free, page)
		}
	})
	b.Run("remove-empty", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Remove(free, 2*mib)
		}
	})
}

// TestDAXSetupAfterSessionEnd: a SETUPMAPPING whose session was checked
// before a DESTROY (the server reads Epoch, then the Reset comes, then a
// new INIT) maps nothing, even when the window already holds the node's
// descriptor and so opens nothing.
func TestDAXSetupAfterSessionEnd(t *testing.T) {
	v := newVMM(true)
	f := newDupFiles(t, 4*mib)
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	if e := w.Setup(2, 0, chunk, FlagRead, 0); e != 0 {
		t.Fatal(e)
	}
	epoch := w.Epoch()
	w.Reset(true) // DESTROY
	if e := w.SetupIn(epoch, 2, 0, chunk, FlagRead, chunk); e != ErrStale {
		t.Errorf("a setup of the ended session: %v, want ErrStale", e)
	}
	if e := w.Setup(2, 0, chunk, FlagRead, chunk); e != 0 {
		t.Fatal(e)
	}
	epoch = w.Epoch()
	w.Reset(true)
	if e := w.SetupIn(epoch, 2, 0, chunk, FlagRead, 2*chunk); e != ErrStale {
		t.Errorf("a setup of the ended session: %v, want ErrStale", e)
	}
	if x := w.Extents(); len(x) != 0 || len(v.maps) != 0 {
		t.Errorf("the books hold %+v, the VMM %x", x, v.sorted())
	}
}

// recFiles records whether each descriptor asked for was writable.
type recFiles struct {
	Files
	asked []bool
}

func (r *recFiles) MappingFd(nodeID uint64, writable bool) (int, syscall.Errno) {
	r.asked = append(r.asked, writable)
	return r.Files.MappingFd(nodeID, writable)
}

// TestDAXReadDescriptors: a read mapping gets a read-only descriptor from a
// VMM that maps with the range's protection, and a read-write one (when the
// file allows) from one that maps reads from read-write descriptors only.
func TestDAXReadDescriptors(t *testing.T) {
	for _, shmem := range []bool{false, true} {
		f := &recFiles{Files: newDupFiles(t, 4*mib)}
		w, err := NewWindow(64*mib, page, newVMM(shmem), f)
		if err != nil {
			t.Fatal(err)
		}
		if e := w.Setup(2, 0, chunk, FlagRead, 0); e != 0 {
			t.Fatal(e)
		}
		if want := []bool{shmem}; !slices.Equal(f.asked, want) {
			t.Errorf("shmem %v: descriptors asked %v, want %v", shmem, f.asked, want)
		}
		w.Reset(true)
	}
}
