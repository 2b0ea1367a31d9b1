package fuse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// A steady-state request served from prebuilt segments: the request and
// reply buffers stand for guest memory, reused as a ring would reuse them.
type steadyReq struct {
	name    string
	in, out [][]byte
	// wantBody is the expected reply body size.
	wantBody int
}

// steadyRequests sets up a session with a file of ioSize bytes and returns
// GETATTR, LOOKUP, READ and WRITE requests on it, cut into segments of
// segSize bytes (0: one segment).
func steadyRequests(tb testing.TB, ioSize, segSize int) (*client, []steadyReq) {
	lay := layout{name: "steady"}
	if segSize > 0 {
		lay.in, lay.out = []int{segSize}, []int{segSize}
	}
	c := newSession(tb, lay)
	d := c.mkdir(root, "dir", 0o755)
	f := c.create(d.NodeId, "file", syscall.O_RDWR, 0o644)
	c.write(f.NodeId, f.Fh, 0, pattern(ioSize, 1))

	mk := func(name string, req []byte, outSize, body int) steadyReq {
		return steadyReq{name: name, in: split(req, lay.in), out: outSegs(outSize, lay.out), wantBody: body}
	}
	return c, []steadyReq{
		mk("GETATTR", c.build(opGetattr, f.NodeId, args(&gofuse.GetAttrIn{})), 16+104, 104),
		mk("LOOKUP", c.build(opLookup, d.NodeId, cstr("file")), 16+128, 128),
		mk("READ", c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: uint32(ioSize)})), 16+ioSize, ioSize),
		mk("WRITE", c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: uint32(ioSize)}), pattern(ioSize, 2)), 16+8, 8),
	}
}

var errSteady = errors.New("unexpected reply")

// serveSteady serves r and checks the reply's size and status, without
// allocating.
func serveSteady(w *Worker, r *steadyReq) error {
	n := w.Serve(r.in, r.out)
	if int(n) != outHeaderSize+r.wantBody {
		return errSteady
	}
	var hdr [outHeaderSize]byte
	got := 0
	for _, s := range r.out {
		got += copy(hdr[got:], s)
		if got == outHeaderSize {
			break
		}
	}
	if binary.LittleEndian.Uint32(hdr[4:]) != 0 {
		return errSteady
	}
	return nil
}

// TestServeAllocs asserts that GETATTR, LOOKUP, READ and WRITE allocate
// nothing per request once the session is warm.
func TestServeAllocs(t *testing.T) {
	for _, io := range []struct{ size, seg int }{{4096, 0}, {4096, 1000}, {128 << 10, 4096}, {100, 7}} {
		c, reqs := steadyRequests(t, io.size, io.seg)
		for i := range reqs {
			r := &reqs[i]
			t.Run(fmt.Sprintf("%s/%dB/seg%d", r.name, io.size, io.seg), func(t *testing.T) {
				// Warm up: the first WRITE may grow the file.
				for range 3 {
					if err := serveSteady(c.w, r); err != nil {
						t.Fatal(err)
					}
				}
				var err error
				allocs := testing.AllocsPerRun(200, func() {
					if e := serveSteady(c.w, r); e != nil {
						err = e
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				if allocs != 0 {
					t.Errorf("%s: %v allocations per request, want 0", r.name, allocs)
				}
			})
		}
	}
}

func benchServe(b *testing.B, op string, ioSize, segSize int) {
	c, reqs := steadyRequests(b, ioSize, segSize)
	var r *steadyReq
	for i := range reqs {
		if reqs[i].name == op {
			r = &reqs[i]
		}
	}
	if op == "READ" || op == "WRITE" {
		b.SetBytes(int64(ioSize))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := serveSteady(c.w, r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkServeGetattr(b *testing.B) { benchServe(b, "GETATTR", 4096, 0) }
func BenchmarkServeLookup(b *testing.B)  { benchServe(b, "LOOKUP", 4096, 0) }

func BenchmarkServeRead(b *testing.B) {
	for _, size := range []int{4 << 10, 128 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) { benchServe(b, "READ", size, 4096) })
	}
}

func BenchmarkServeWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 128 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) { benchServe(b, "WRITE", size, 4096) })
	}
}

// Several workers of one server in parallel, as the request queues run.
func BenchmarkServeGetattrParallel(b *testing.B) {
	c, reqs := steadyRequests(b, 4096, 0)
	// One worker and reply buffer per goroutine, made before timing.
	n := runtime.GOMAXPROCS(0)
	workers := make(chan *Worker, n)
	outs := make(chan [][]byte, n)
	for range n {
		workers <- c.srv.NewWorker()
		outs <- outSegs(16+104, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w, r := <-workers, reqs[0] // GETATTR
		r.out = <-outs
		for pb.Next() {
			if err := serveSteady(w, &r); err != nil {
				panic(err)
			}
		}
	})
}
