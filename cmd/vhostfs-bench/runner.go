package main

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	_ "unsafe" // go:linkname

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
)

// nanotime is the runtime's monotonic clock: one vDSO call, where
// time.Now reads the wall clock too.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// runConfig is how one workload runs.
type runConfig struct {
	queues      int
	depth       int
	duration    time.Duration
	warmup      time.Duration
	readdirSize int
	stall       time.Duration
	spin        time.Duration
}

func (c *runConfig) check() error {
	switch {
	case c.queues < 1 || c.queues > 254:
		return fmt.Errorf("--queues %d: want 1 to 254", c.queues)
	case c.depth < 1 || c.depth > 1024:
		return fmt.Errorf("--depth %d: want 1 to 1024", c.depth)
	case c.duration <= 0:
		return errors.New("--duration must be positive")
	case c.warmup < 0:
		return errors.New("--warmup must not be negative")
	case c.readdirSize < 512 || c.readdirSize > 1<<20:
		return fmt.Errorf("--readdir-size %d: want 512 bytes to 1 MiB", c.readdirSize)
	}
	if c.stall <= 0 {
		c.stall = 30 * time.Second
	}
	return nil
}

// runState is one workload run on a target.
type runState struct {
	t     *target
	cfg   runConfig
	w     *workload
	node  uint64 // the node the workload works on (file or folder)
	slots []*slot
	loops []*queueLoop
}

// slot is one request kept in flight: as soon as its operation completes
// the next one is submitted. An operation is one request or a short
// sequence (create-unlink): start encodes its first request, done checks
// each reply and either encodes the next request or reports the
// operation finished with the data bytes it moved.
type slot struct {
	id    int
	queue int
	ql    *queueLoop
	c     *fuseclient.Client // the slot's queue, for setup and teardown
	name  string             // a file name of its own, for workloads that create one
	rng   uint64

	start func(r *fuseclient.Req) error
	done  func(r *fuseclient.Req) (finished bool, bytes int, err error)
	req   *fuseclient.Req
	t0    int64 // when the operation started

	// Workload state.
	node, fh uint64
	open     bool
	count    uint64
	step     int
}

// rand is xorshift64*: cheap, no allocation, one stream per slot.
func (s *slot) rand() uint64 {
	x := s.rng
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	s.rng = x
	return x * 2685821657736338717
}

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// queueLoop is the event loop of one request queue: one goroutine keeps
// every slot of the queue busy.
type queueLoop struct {
	queue int
	l     *fuseclient.Loop
	slots []*slot
	c     *fuseclient.Client

	// done counts completed operations, warm-up included, for the
	// watchdog; the rest is read once the loop ended.
	done    atomic.Uint64
	ops     uint64 // measured operations
	bytes   uint64 // measured data bytes
	hist    histogram
	err     error
	closed  bool // l was closed: the queue is back with the typed calls
	forgets []fuseclient.ForgetOne
}

// forget queues a FORGET; they go out in batches of 16 on the
// high-priority queue.
func (ql *queueLoop) forget(node, n uint64) error {
	ql.forgets = append(ql.forgets, fuseclient.ForgetOne{NodeID: node, Nlookup: n})
	if len(ql.forgets) < 16 {
		return nil
	}
	return ql.flushForgets()
}

func (ql *queueLoop) flushForgets() error {
	if len(ql.forgets) == 0 {
		return nil
	}
	err := ql.c.BatchForget(ql.forgets)
	ql.forgets = ql.forgets[:0]
	return err
}

func (ql *queueLoop) submit(s *slot) error {
	if err := s.start(s.req); err != nil {
		return err
	}
	return ql.l.Submit(s.req)
}

// run keeps the slots busy until the phase says stop, then lets every
// request in flight come back. Each turn reaps what the device returned,
// submits the next requests and flushes them in one batch; latency runs
// from the flush that made a request available to the reap that saw it
// back.
func (ql *queueLoop) run(phase *atomic.Int32, fail func(), spin time.Duration, wg *sync.WaitGroup) {
	defer wg.Done()
	l := ql.l
	abort := func(err error) {
		if ql.err == nil {
			ql.err = err
		}
		fail()
	}
	for _, s := range ql.slots {
		if err := ql.submit(s); err != nil {
			abort(err)
			break
		}
	}
	batch := make([]*fuseclient.Req, 0, len(ql.slots))
	flush := func() bool {
		if err := l.Flush(); err != nil {
			abort(err) // the ring cannot be trusted any more
			return false
		}
		now := nanotime()
		for _, r := range batch {
			if r.Busy() {
				ql.slots[r.Tag].t0 = now
			}
		}
		return true
	}
	if !flush() {
		return
	}
	start := nanotime()
	for _, s := range ql.slots {
		s.t0 = start
	}
	for l.InFlight() > 0 {
		var err error
		if batch, err = l.Reap(batch[:0]); err != nil {
			abort(err)
			return
		}
		if len(batch) == 0 {
			if spin > 0 {
				if _, err := l.Spin(spin); err != nil {
					abort(err)
					return
				}
				if batch, err = l.Reap(batch[:0]); err != nil {
					abort(err)
					return
				}
			}
			if len(batch) == 0 {
				if err := l.Wait(); err != nil {
					abort(err)
					return
				}
				continue
			}
		}
		ph := phase.Load()
		now := nanotime()
		var ops, bytes uint64
		for _, r := range batch {
			s := ql.slots[r.Tag]
			if r.Err != nil {
				abort(fmt.Errorf("slot %d: %w", s.id, r.Err))
				continue
			}
			finished, n, err := s.done(r)
			if err != nil {
				abort(fmt.Errorf("slot %d: %w", s.id, err))
				continue
			}
			if !finished {
				// The operation goes on, even while stopping.
				if err := l.Submit(r); err != nil {
					abort(err)
				}
				continue
			}
			if ph == phaseMeasure {
				ql.hist.add(uint64(now - s.t0))
				ops++
				bytes += uint64(n)
			}
			if ph != phaseWarmup && ph != phaseMeasure {
				continue
			}
			if err := ql.submit(s); err != nil {
				abort(err)
			}
		}
		ql.ops += ops
		ql.bytes += bytes
		ql.done.Add(uint64(len(batch)))
		if !flush() {
			return
		}
	}
}

// result is one measured run.
type result struct {
	Workload      string  `json:"workload"`
	Daemon        string  `json:"daemon"`
	Queues        int     `json:"queues"`
	Depth         int     `json:"depth"`
	Seconds       float64 `json:"seconds"`
	Ops           uint64  `json:"ops"`
	OpsPerSec     float64 `json:"ops_per_sec"`
	MBPerSec      float64 `json:"mb_per_sec"`
	P50us         float64 `json:"p50_us"`
	P99us         float64 `json:"p99_us"`
	RequestsPerOp int     `json:"requests_per_op"`
	// Harness cost during the measurement: heap allocations per
	// operation and the CPU this process used (cores busy; the trivial
	// back-end runs inside it).
	AllocsPerOp float64 `json:"harness_allocs_per_op"`
	HarnessCPU  float64 `json:"harness_cpu_cores"`
	// DaemonCPU is the CPU the started back-end used (cores busy), 0
	// when unknown.
	DaemonCPU float64 `json:"daemon_cpu_cores"`
}

func resultHeader() string {
	return fmt.Sprintf("%-14s %-8s %3s %5s %12s %10s %10s %10s %9s %7s %7s",
		"WORKLOAD", "DAEMON", "Q", "DEPTH", "OPS/S", "MB/S", "P50(us)", "P99(us)", "ALLOCS/OP", "CPU", "D-CPU")
}

func (r result) line() string {
	mb := "-"
	if r.MBPerSec > 0 {
		mb = fmt.Sprintf("%.1f", r.MBPerSec)
	}
	dcpu := "-"
	if r.DaemonCPU > 0 {
		dcpu = fmt.Sprintf("%.2f", r.DaemonCPU)
	}
	return fmt.Sprintf("%-14s %-8s %3d %5d %12.0f %10s %10.1f %10.1f %9.3f %7.2f %7s",
		r.Workload, r.Daemon, r.Queues, r.Depth, r.OpsPerSec, mb, r.P50us, r.P99us, r.AllocsPerOp, r.HarnessCPU, dcpu)
}

// treeCPU returns the CPU time process pid and its descendants (a
// sandboxed daemon runs in a child) used so far.
func treeCPU(pid int) (time.Duration, bool) {
	total, ok := procCPU(pid)
	if !ok {
		return 0, false
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(b)) {
			if child, err := strconv.Atoi(c); err == nil {
				if d, ok := treeCPU(child); ok {
					total += d
				}
			}
		}
	}
	return total, true
}

// procCPU returns the CPU time process pid used so far (all its
// threads), from /proc/PID/stat.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name may hold spaces: fields start after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(ut+st) * 10 * time.Millisecond, true
}

// runWorkload prepares the shared folder, runs one workload on t and
// measures it.
func runWorkload(t *target, name string, cfg runConfig) (result, error) {
	w := workloads[name]
	if w == nil {
		return result{}, fmt.Errorf("unknown workload %q", name)
	}
	if !t.trivial {
		if err := w.prepare(t.sharedDir); err != nil {
			return result{}, fmt.Errorf("preparing %s: %w", t.sharedDir, err)
		}
	}
	r := &runState{t: t, cfg: cfg, w: w}
	stop := startWatchdog(cfg.stall, name+" setup on "+t.name, nil, t.fe)
	err := w.setup(r)
	for q := 1; err == nil && q <= cfg.queues; q++ {
		c := t.client.OnQueue(q)
		ql := &queueLoop{queue: q, c: c, forgets: make([]fuseclient.ForgetOne, 0, 16)}
		r.loops = append(r.loops, ql)
		for d := 0; d < cfg.depth; d++ {
			id := len(r.slots)
			s := &slot{id: id, queue: q, ql: ql, c: c, name: fmt.Sprintf("%s-q%d-s%d", name, q, d),
				rng: 0x9e3779b97f4a7c15 * uint64(id+1)}
			r.slots = append(r.slots, s)
			ql.slots = append(ql.slots, s)
			if err = w.newSlot(r, s); err != nil {
				break
			}
		}
	}
	stop()
	if err != nil {
		terr := r.teardown()
		return result{}, errors.Join(err, terr)
	}
	res, err := r.measure()
	if terr := r.teardown(); err == nil {
		err = terr
	}
	return res, err
}

func (r *runState) teardown() error {
	stop := startWatchdog(r.cfg.stall, r.w.name+" teardown on "+r.t.name, nil, r.t.fe)
	defer stop()
	var errs []error
	for _, ql := range r.loops {
		if ql.l != nil && !ql.closed {
			// A loop that failed still owns its queue, with requests
			// in flight: the session is beyond repair.
			return errors.New("teardown skipped after a failed run")
		}
		errs = append(errs, ql.flushForgets())
	}
	errs = append(errs, r.w.teardown(r))
	return errors.Join(errs...)
}

var allocsMetric = []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}

func heapAllocs() uint64 {
	metrics.Read(allocsMetric)
	if allocsMetric[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return allocsMetric[0].Value.Uint64()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs the queue loops: warm-up, then the measured window.
func (r *runState) measure() (result, error) {
	for _, ql := range r.loops {
		l, err := r.t.client.NewLoop(ql.queue)
		if err != nil {
			return result{}, err
		}
		ql.l = l
		for i, s := range ql.slots {
			if s.req, err = l.NewReq(); err != nil {
				return result{}, err
			}
			s.req.Tag = i
		}
	}
	var phase atomic.Int32
	failed := make(chan struct{})
	var once sync.Once
	fail := func() {
		phase.Store(phaseStop)
		once.Do(func() { close(failed) })
	}
	progress := func() uint64 {
		var n uint64
		for _, ql := range r.loops {
			n += ql.done.Load()
		}
		return n
	}
	stop := startWatchdog(r.cfg.stall, r.w.name+" on "+r.t.name, progress, r.t.fe)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(len(r.loops))
	for _, ql := range r.loops {
		go ql.run(&phase, fail, r.cfg.spin, &wg)
	}
	// Both timers exist before the allocation count starts.
	warm, window := time.NewTimer(r.cfg.warmup), time.NewTimer(time.Hour)
	window.Stop()
	defer warm.Stop()
	defer window.Stop()
	wait := func(t *time.Timer) bool {
		select {
		case <-failed:
			return false
		case <-t.C:
			return true
		}
	}
	var t0, t1 int64
	var a0, a1 uint64
	var c0, c1, d0, d1 time.Duration
	pid, dok := 0, false
	if p := r.t.fe.Proc(); p != nil {
		pid = p.Pid()
	}
	ok := wait(warm)
	if ok {
		if pid > 0 {
			d0, dok = treeCPU(pid) // before the allocation count: it allocates
		}
		// The runtime counts small allocations when a span leaves a P's
		// cache, at the latest at a GC: collect before reading the count,
		// so that earlier allocations do not land in the window, and after
		// it, so that the window's own are all in.
		runtime.GC()
		a0, c0 = heapAllocs(), cpuTime()
		t0 = nanotime()
		phase.Store(phaseMeasure)
		window.Reset(r.cfg.duration)
		ok = wait(window)
		phase.Store(phaseStop)
		t1 = nanotime()
		c1 = cpuTime()
		runtime.GC()
		a1 = heapAllocs()
		if dok {
			d1, dok = treeCPU(pid)
		}
	}
	phase.Store(phaseStop)
	wg.Wait()
	var errs []error
	for _, ql := range r.loops {
		if ql.err != nil {
			errs = append(errs, fmt.Errorf("queue %d: %w", ql.queue, ql.err))
			continue
		}
		if err := ql.l.Close(); err != nil {
			errs = append(errs, err)
			continue
		}
		ql.closed = true
	}
	if len(errs) > 0 || !ok {
		return result{}, errors.Join(errs...)
	}
	var h histogram
	res := result{Workload: r.w.name, Daemon: r.t.name, Queues: r.cfg.queues, Depth: r.cfg.depth,
		RequestsPerOp: r.w.requests}
	var bytes uint64
	for _, ql := range r.loops {
		res.Ops += ql.ops
		bytes += ql.bytes
		h.merge(&ql.hist)
	}
	secs := float64(t1-t0) / 1e9
	res.Seconds = secs
	res.OpsPerSec = float64(res.Ops) / secs
	res.MBPerSec = float64(bytes) / secs / 1e6
	res.P50us = float64(h.quantile(0.50)) / 1e3
	res.P99us = float64(h.quantile(0.99)) / 1e3
	if res.Ops > 0 {
		res.AllocsPerOp = float64(a1-a0) / float64(res.Ops)
	}
	res.HarnessCPU = (c1 - c0).Seconds() / secs
	if dok {
		res.DaemonCPU = (d1 - d0).Seconds() / secs
	}
	if res.Ops == 0 {
		return res, errors.New("no operation completed in the measured window")
	}
	return res, nil
}

// startWatchdog fails the process when progress (nil: none expected)
// stands still for stall: a back-end that stops answering would otherwise
// hang the harness, which waits for completions without timers. The
// returned function stops it.
func startWatchdog(stall time.Duration, stage string, progress func() uint64, fe *frontend.Frontend) func() {
	if stall <= 0 {
		stall = 30 * time.Second
	}
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(min(stall/4, time.Second))
		defer tick.Stop()
		var last uint64
		if progress != nil {
			last = progress()
		}
		since := time.Now()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if progress != nil {
				if n := progress(); n != last {
					last, since = n, time.Now()
					continue
				}
			}
			if time.Since(since) < stall {
				continue
			}
			var b strings.Builder
			fmt.Fprintf(&b, "vhostfs-bench: %s: no progress for %v; giving up\n", stage, stall)
			if fe != nil {
				for i := 0; i < fe.NumQueues(); i++ {
					fmt.Fprintf(&b, "  queue %d: %s\n", i, fe.Queue(i).Describe())
				}
				if p := fe.Proc(); p != nil {
					fmt.Fprintf(&b, "  %s output:\n%s\n", p.Name, lastLines(p.Stderr(), 20))
				}
			}
			os.Stderr.WriteString(b.String())
			os.Exit(3)
		}
	}()
	return func() { close(done) }
}

// histogram is a log-linear latency histogram in nanoseconds: exact
// below 64 ns, then 32 buckets per power of two (3% resolution). Adding
// costs a few instructions and never allocates.
type histogram struct {
	n [64 + 58*32]uint64
}

func histBucket(v uint64) int {
	if v < 64 {
		return int(v)
	}
	e := bits.Len64(v) - 6 // v>>e is in [32, 64)
	return 64 + (e-1)*32 + int(v>>e) - 32
}

// histValue is the middle of bucket i.
func histValue(i int) uint64 {
	if i < 64 {
		return uint64(i)
	}
	e := (i-64)/32 + 1
	m := uint64((i-64)%32 + 32)
	return m<<e + (uint64(1)<<e)/2
}

func (h *histogram) add(v uint64) { h.n[histBucket(v)]++ }

func (h *histogram) merge(o *histogram) {
	for i, c := range o.n {
		h.n[i] += c
	}
}

func (h *histogram) count() uint64 {
	var t uint64
	for _, c := range h.n {
		t += c
	}
	return t
}

// quantile returns the value below which a fraction q of the samples lie.
func (h *histogram) quantile(q float64) uint64 {
	total := h.count()
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.n {
		if seen += c; seen >= rank {
			return histValue(i)
		}
	}
	return histValue(len(h.n) - 1)
}
