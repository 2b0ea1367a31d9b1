package main

import (
	"encoding/binary"
	"math"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// TestMain lets the test binary be the trivial back-end too ("--daemon
// trivial" starts this program again with serveTrivialEnv set).
//
// The tests of every workload against govirtiofsd and the reference
// virtiofsd, and TestHarnessCeiling, run the built program from
// test/bench/workloads: they need the lab.
func TestMain(m *testing.M) {
	if os.Getenv(serveTrivialEnv) != "" {
		serveTrivialAndExit(os.Args[1:])
	}
	os.Exit(m.Run())
}

func TestHistogram(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 65, 100, 1000, 12345, 1 << 20, 3<<30 + 7, math.MaxUint64 >> 1} {
		i := histBucket(v)
		if i < 0 || i >= len(histogram{}.n) {
			t.Fatalf("value %d: bucket %d out of range", v, i)
		}
		mid := histValue(i)
		if d := math.Abs(float64(mid)-float64(v)) / math.Max(float64(v), 1); v >= 64 && d > 1.0/32 {
			t.Errorf("value %d lands in bucket %d of middle %d (%.1f%% off)", v, i, mid, 100*d)
		}
		if v < 64 && mid != v {
			t.Errorf("value %d: bucket %d middle %d, want exact", v, i, mid)
		}
		if i > 0 && histBucket(v) < histBucket(v/2) {
			t.Errorf("buckets not monotonic at %d", v)
		}
	}
	var h histogram
	for v := uint64(1); v <= 1000; v++ {
		h.add(v * 1000)
	}
	for _, c := range []struct {
		q    float64
		want float64
	}{{0.5, 500e3}, {0.99, 990e3}, {1, 1000e3}} {
		got := float64(h.quantile(c.q))
		if math.Abs(got-c.want)/c.want > 0.04 {
			t.Errorf("quantile %.2f = %.0f, want about %.0f", c.q, got, c.want)
		}
	}
	var other histogram
	other.merge(&h)
	if other.count() != 1000 {
		t.Errorf("merged count %d, want 1000", other.count())
	}
	if allocs := testing.AllocsPerRun(1000, func() { h.add(12345) }); allocs != 0 {
		t.Errorf("histogram add allocates %.1f times", allocs)
	}
}

// TestTrivialHandler checks the fixed reply: a GETATTR reply echoing the
// request's unique, written across the writable buffers.
func TestTrivialHandler(t *testing.T) {
	h := newTrivialHandler()
	in := make([]byte, inHeaderSize+16)
	binary.LittleEndian.PutUint32(in[4:], 3)
	binary.LittleEndian.PutUint64(in[8:], 0x1234)
	out := make([]byte, outHeaderSize+attrOutSize)
	c := &virtqueue.DescriptorChain{Readable: [][]byte{in[:7], in[7:]}, Writable: [][]byte{out[:16], out[16:]}}
	if n := h.Handle(1, c); n != uint32(len(out)) {
		t.Fatalf("reply of %d bytes, want %d", n, len(out))
	}
	oh := (*fuse.OutHeader)(unsafe.Pointer(&out[0]))
	if oh.Unique != 0x1234 || oh.Status != 0 || oh.Length != uint32(len(out)) {
		t.Errorf("reply header %+v", *oh)
	}
	if n := h.Handle(0, c); n != 0 {
		t.Errorf("high-priority request answered with %d bytes", n)
	}
	if allocs := testing.AllocsPerRun(100, func() { h.Handle(1, c) }); allocs != 0 {
		t.Errorf("handler allocates %.1f times", allocs)
	}
}

// TestTrivialPoll checks vhostuser.Options.Poll through the trivial
// back-end: while its ring worker polls, the harness hardly needs to kick;
// without polling a kick goes with most batches.
func TestTrivialPoll(t *testing.T) {
	kicksPerRequest := func(poll time.Duration) float64 {
		cfg := runConfig{queues: 1, depth: 4, duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond,
			readdirSize: 4096, stall: 10 * time.Second}
		tg, err := openTarget(targetSpec{daemon: "trivial-inproc", poll: poll}, cfg, []string{"getattr"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := runWorkload(tg, "getattr", cfg); err != nil {
			t.Fatal(err)
		}
		st := tg.fe.Queue(1).Stats()
		if err := tg.close(); err != nil {
			t.Fatal(err)
		}
		if st.Submitted < 1000 {
			t.Fatalf("poll %v: only %d requests submitted", poll, st.Submitted)
		}
		r := float64(st.Kicks) / float64(st.Submitted)
		t.Logf("poll %v: %d requests, %d kicks (%.4f per request)", poll, st.Submitted, st.Kicks, r)
		return r
	}
	polling, sleeping := kicksPerRequest(time.Minute), kicksPerRequest(0)
	if polling > 0.01 {
		t.Errorf("a polling back-end still got %.4f kicks per request", polling)
	}
	if sleeping < 10*polling || sleeping < 0.02 {
		t.Errorf("a sleeping back-end got %.4f kicks per request (polling: %.4f): the comparison shows nothing", sleeping, polling)
	}
}
