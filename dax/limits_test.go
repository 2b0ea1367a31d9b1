package dax

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// testLog returns a logger writing to a buffer, and a clock the test moves.
func testLog(w *Window) (*bytes.Buffer, *time.Time) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	w.SetLog(l)
	now := time.Unix(1000, 0)
	w.now = func() time.Time { return now }
	return &buf, &now
}

func lines(buf *bytes.Buffer) []string {
	s := strings.TrimSpace(buf.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// TestDAXLimits: past the bounds a request gets ENOSPC without side
// effects (the VMM never hears of it), a mapping replaced at the bound is
// allowed, a hole cut in a mapping at the bound is refused (it would
// leave two), and the operator reads one line per logPeriod with the
// count of refusals held back.
func TestDAXLimits(t *testing.T) {
	v := &nullVMM{pastEOF: true}
	f := newDupFiles(t, mib)
	w, err := NewWindow(64*mib, page, v, f)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Reset(true)
	buf, now := testLog(w)
	w.SetLimits(4, 2)
	if m, n := w.Limits(); m != 4 || n != 2 {
		t.Fatalf("Limits %d %d", m, n)
	}
	must := func(e syscall.Errno) {
		t.Helper()
		if e != 0 {
			t.Fatal(e)
		}
	}
	must(w.Setup(2, 0, 4*page, FlagRead, 0))
	must(w.Setup(3, 0, page, FlagRead, 8*page))
	must(w.Setup(2, 0, page, FlagRead, 10*page))
	maps, unmaps := v.maps, v.unmaps
	if e := w.Setup(4, 0, page, FlagRead, 20*page); e != ErrFull {
		t.Errorf("a third file: %v, want ENOSPC", e)
	}
	must(w.Setup(2, 0, page, FlagRead, 12*page)) // the fourth mapping
	maps++
	for range 100 {
		if e := w.Setup(2, 0, page, FlagRead, 14*page); e != ErrFull {
			t.Fatalf("a fifth mapping: %v, want ENOSPC", e)
		}
	}
	// A hole in [0, 4 pages) would make five.
	if e := w.Remove(page, page); e != ErrFull {
		t.Errorf("a hole at the bound: %v, want ENOSPC", e)
	}
	// A setup in the middle of it would make six.
	if e := w.Setup(3, 0, page, FlagRead, page); e != ErrFull {
		t.Errorf("a setup splitting a mapping at the bound: %v, want ENOSPC", e)
	}
	if v.maps != maps || v.unmaps != unmaps {
		t.Errorf("refused requests reached the VMM: %d maps, %d unmaps", v.maps-maps, v.unmaps-unmaps)
	}
	if x := w.Extents(); len(x) != 4 || x[0].Length != 4*page {
		t.Errorf("books after refusals: %+v", x)
	}
	// Replacing a mapping, or trimming one, is no new mapping.
	must(w.Setup(3, 0, page, FlagRead|FlagWrite, 10*page))
	must(w.Remove(3*page, page))
	if got := lines(buf); len(got) != 1 || !strings.Contains(got[0], "ENOSPC") {
		t.Fatalf("log after %d refusals: %q", 103, got)
	}
	*now = now.Add(logPeriod + time.Second)
	if e := w.Setup(2, 0, page, FlagRead, 14*page); e != ErrFull {
		t.Fatal(e)
	}
	if got := lines(buf); len(got) != 2 || !strings.Contains(got[1], "102 more refused") {
		t.Fatalf("log after the period: %q", got)
	}
	// Removing node 2's mappings makes room for another file.
	must(w.Remove(0, 4*page))
	must(w.Remove(12*page, page))
	must(w.Setup(4, 0, page, FlagRead, 20*page))
	if got := w.Descriptors(); got != 3 {
		t.Errorf("%d descriptors for two files, one mapped read-write too", got)
	}
}

// TestDAXRefusalsRateLimited: a guest can make the VMM refuse maps in a
// loop; the operator's log gets the first refusal, then one line per
// logPeriod with the count held back.
func TestDAXRefusalsRateLimited(t *testing.T) {
	v := &nullVMM{pastEOF: true, refuse: fmt.Errorf("front-end refused SHMEM_MAP (status 1)")}
	w, err := NewWindow(64*mib, page, v, newDupFiles(t, mib))
	if err != nil {
		t.Fatal(err)
	}
	buf, now := testLog(w)
	for i := range 1000 {
		if e := w.Setup(2, 0, page, FlagRead, uint64(i%100)*page); e != syscall.EIO {
			t.Fatalf("refused map: %v", e)
		}
	}
	got := lines(buf)
	if len(got) != 1 || !strings.Contains(got[0], "refused to map") {
		t.Fatalf("log after 1000 refusals: %q", got)
	}
	*now = now.Add(logPeriod)
	w.Setup(2, 0, page, FlagRead, 0)
	if got = lines(buf); len(got) != 2 || !strings.Contains(got[1], "999 more refusals") {
		t.Fatalf("log after the period: %q", got)
	}
	if d := w.Descriptors(); d != 0 {
		t.Errorf("refused maps left %d descriptors", d)
	}
}

// TestDAXRandomOps sends random SETUPMAPPINGs, REMOVEMAPPINGs, growths and
// shrinks of the files, Grows and Resets, through both transports, and
// checks after each that the books agree with the VMM, that the window
// holds exactly one descriptor per file and access its mappings use, and
// that the counts (Count, Clamped) match the books.
func TestDAXRandomOps(t *testing.T) {
	for _, shmem := range []bool{true, false} {
		t.Run(fmt.Sprint("shmem ", shmem), func(t *testing.T) {
			w, v, h := newTestWindow(t, shmem)
			var nodes []uint64
			var paths []string
			for _, size := range []int64{mib, 3 * mib, 64 * kib} {
				n, p := h.add(t, size)
				nodes, paths = append(nodes, n), append(paths, p)
			}
			r := rand.New(rand.NewPCG(1, uint64(len(paths))))
			slot := func() uint64 { return uint64(r.IntN(64)) * 16 * kib } // the first 1 MiB, in 16 KiB
			for step := range 3000 {
				switch k := r.IntN(20); {
				case k < 9:
					length := uint64(1+r.IntN(8)) * 16 * kib
					foff := uint64(r.IntN(48)) * 16 * kib
					w.Setup(nodes[r.IntN(len(nodes))], foff, length, uint64(FlagRead|r.IntN(2)), slot())
				case k < 16:
					w.Remove(slot(), uint64(1+r.IntN(8))*16*kib)
				case k < 18:
					i := r.IntN(len(paths))
					grow(t, paths[i], int64(r.IntN(64))*16*kib)
					w.Grow(nodes[i])
				case k < 19:
					w.Grow(nodes[r.IntN(len(nodes))])
				default:
					if r.IntN(10) == 0 {
						w.Reset(true)
					}
				}
				agree(t, w, v)
				x := w.Extents()
				want := map[[2]uint64]bool{}
				clamped, pieces := false, 0
				for _, e := range x {
					rw := uint64(0)
					if e.Writable {
						rw = 1
					}
					want[[2]uint64{e.Node, rw}] = true
					clamped = clamped || e.Mapped < e.Length
					pieces += e.Pieces
				}
				if d := w.Descriptors(); d != len(want) {
					t.Fatalf("step %d: %d descriptors for %d files and accesses: %+v", step, d, len(want), x)
				}
				if w.Clamped() != clamped || w.Count() != pieces || w.nClamped.Load() < 0 {
					t.Fatalf("step %d: Clamped %v (%d), Count %d; books %+v", step, w.Clamped(), w.nClamped.Load(), w.Count(), x)
				}
				w.mu.Lock()
				nc := 0
				for _, n := range w.nodes {
					nc += len(n.clamp)
					for ci, moff := range n.clamp {
						if i := w.find(moff); i < 0 || w.extents[i].node != n || !w.extents[i].clamped() || w.extents[i].ci != ci {
							t.Fatalf("step %d: node %d tracks %#x, not its clamped extent", step, n.id, moff)
						}
					}
				}
				w.mu.Unlock()
				if int64(nc) != w.nClamped.Load() {
					t.Fatalf("step %d: nodes track %d clamped extents, the count says %d", step, nc, w.nClamped.Load())
				}
			}
		})
	}
}

// TestDAXConcurrentReset: Setup, Remove, Grow and Extending on several
// queues while another resets the window (run with -race): no request uses
// a descriptor another closed (the VMM refuses a closed one), and after
// the last Reset nothing is held.
func TestDAXConcurrentReset(t *testing.T) {
	w, v, h := newTestWindow(t, true)
	vmu := &syncMutexChannel{ch: v}
	w.ch = vmu
	base := openFds(t)
	var nodes []uint64
	var paths []string
	for range 3 {
		n, p := h.add(t, mib)
		nodes, paths = append(nodes, n), append(paths, p)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 3 {
		wg.Go(func() {
			for i := range 400 {
				node := nodes[(g+i)%len(nodes)]
				moff := uint64(i%8) * chunk
				switch i % 6 {
				case 0, 1, 2:
					w.Setup(node, 0, chunk, FlagRead|uint64(i%2), moff)
				case 3:
					w.Remove(moff, chunk)
				case 4:
					w.Grow(node)
				case 5:
					w.Extending(node, mib+4096*uint64(i)+1)
					if i%30 == 5 {
						os.Truncate(paths[g], int64(mib+4096*i))
					}
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				w.Reset(true)
				time.Sleep(time.Millisecond)
			}
		}
	})
	time.Sleep(10 * time.Millisecond)
	close(stop)
	wg.Wait()
	agree(t, w, v)
	w.Reset(true)
	vmu.mu.Lock()
	defer vmu.mu.Unlock()
	for _, err := range vmu.refused {
		if errors.Is(err, syscall.EBADF) {
			t.Errorf("a closed descriptor reached the VMM: %v", err)
		}
	}
	if len(v.maps) != 0 || w.Descriptors() != 0 {
		t.Errorf("after Reset: VMM %x, %d descriptors", v.sorted(), w.Descriptors())
	}
	if got := openFds(t) - base; got != 0 {
		t.Errorf("%d descriptors left open", got)
	}
}
