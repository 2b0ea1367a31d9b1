package vhostuser

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// The guest of TestHeldLayoutStaysMapped: region 0 (1 MiB at guest address
// 0) holds queue 1's ring at hlRing and the requests; regions A, B and C
// are small regions of their own memfds. Every chain's reply buffer is in
// B.
const (
	hlRing    = fzRingStride
	hlRegSize = 64 << 10
	hlA       = 0x100000
	hlB       = 0x200000
	hlC       = 0x300000
	hlReply   = "written through the held layout"
	hlCaseEnv = "VHOSTUSER_HELD_LAYOUT_CASE"
	hlBName   = "held-b"
)

// holdDevice serves queue 1. A chain whose request starts with 'H' is
// held: its handler reports its reply buffer's address on entered and
// waits for proceed, as a worker that waits on the VMM holds its chain's
// memory layout, then writes hlReply into the buffer and reports how that
// went on wrote. Other chains are answered at once.
type holdDevice struct {
	entered chan uintptr
	proceed chan struct{}
	wrote   chan error
}

func (d *holdDevice) Features() uint64    { return 0 }
func (d *holdDevice) MaxQueues() int      { return 2 }
func (d *holdDevice) Config() []byte      { return nil }
func (d *holdDevice) NewHandler() Handler { return d }
func (d *holdDevice) Reset()              {}

func (d *holdDevice) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	if len(c.Readable) == 0 || len(c.Writable) == 0 || len(c.Writable[0]) < len(hlReply) {
		return 0
	}
	w := c.Writable[0]
	if c.Readable[0][0] != 'H' {
		return uint32(copy(w, "quick"))
	}
	d.entered <- uintptr(unsafe.Pointer(&w[0]))
	<-d.proceed
	err := writeGuest(w, hlReply)
	d.wrote <- err
	if err != nil {
		return 0
	}
	return uint32(len(hlReply))
}

// mapsB reports whether addr lies in a mapping of region B's memfd.
func mapsB(addr uintptr) bool {
	return strings.HasSuffix(mappingAt(addr), "/memfd:"+hlBName+" (deleted)")
}

// mappingAt returns the line of /proc/self/maps that holds addr.
func mappingAt(addr uintptr) string {
	b, _ := os.ReadFile("/proc/self/maps")
	for _, l := range strings.Split(string(b), "\n") {
		var lo, hi uintptr
		if _, err := fmt.Sscanf(l, "%x-%x", &lo, &hi); err == nil && addr >= lo && addr < hi {
			return l
		}
	}
	return "nothing"
}

// writeGuest copies s into b, a buffer in region B, failing instead of
// faulting or writing elsewhere when B is no longer mapped there.
func writeGuest(b []byte, s string) (err error) {
	if addr := uintptr(unsafe.Pointer(&b[0])); !mapsB(addr) {
		return fmt.Errorf("region B is no longer mapped at the reply buffer's %#x (%s is)", addr, mappingAt(addr))
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("writing the reply buffer: %v", r)
		}
	}()
	copy(b, s)
	return nil
}

// heldGuest is the guest of one case and the front-end's view of queue 1.
type heldGuest struct {
	t       *testing.T
	s       *testSession
	m       []byte // region 0
	fds     map[uint64]int
	d       *virtqueue.Driver
	kick    int
	entered chan uintptr
}

func (g *heldGuest) payload(gpas ...uint64) ([]byte, []int) {
	p := u32le(uint32(len(gpas)), 0)
	var fds []int
	for _, gpa := range gpas {
		size := uint64(hlRegSize)
		if gpa == 0 {
			size = 1 << 20
		}
		p = append(p, region(gpa, size, fzUserBase+gpa, 0)...)
		fds = append(fds, g.fds[gpa])
	}
	return p, fds
}

// setTable sends SET_MEM_TABLE with the regions at gpas, mapped afresh.
func (g *heldGuest) setTable(gpas ...uint64) {
	g.t.Helper()
	p, fds := g.payload(gpas...)
	if st := g.s.request(SetMemTable, p, true, fds...); st != 0 {
		g.t.Fatalf("SET_MEM_TABLE %#x refused", gpas)
	}
}

func (g *heldGuest) add(gpa uint64) {
	g.t.Helper()
	p, fds := g.payload(gpa)
	if st := g.s.request(AddMemReg, append(make([]byte, 8), p[8:]...), true, fds...); st != 0 {
		g.t.Fatalf("ADD_MEM_REG %#x refused", gpa)
	}
}

func (g *heldGuest) rem(gpa uint64) {
	g.t.Helper()
	p, _ := g.payload(gpa)
	if st := g.s.request(RemMemReg, append(make([]byte, 8), p[8:]...), true); st != 0 {
		g.t.Fatalf("REM_MEM_REG %#x refused", gpa)
	}
}

// publish makes chains available on queue 1, each reading its request at
// req (readLen bytes, starting with tag) and writing its reply to reply,
// and kicks once.
func (g *heldGuest) publish(chains ...heldChain) {
	g.t.Helper()
	for _, c := range chains {
		g.m[c.req] = c.tag
		if _, err := g.d.Add([]virtqueue.Buffer{{Addr: c.req, Len: c.readLen}}, []virtqueue.Buffer{{Addr: c.reply, Len: 64}}); err != nil {
			g.t.Fatal(err)
		}
	}
	unix.Write(g.kick, eventOne[:])
}

type heldChain struct {
	tag        byte
	req, reply uint64
	readLen    uint32
}

// quick is a chain answered at once, replying in region 0.
var quick = heldChain{tag: 'Q', req: 0x40000, reply: 0x41000, readLen: 16}

// waitUsed waits until the device has used n entries of queue 1.
func (g *heldGuest) waitUsed(n uint16) {
	g.t.Helper()
	deadline := time.Now().Add(fzWait)
	for g.d.UsedIdx() != n {
		if time.Now().After(deadline) {
			g.t.Fatalf("queue 1: %d of %d chains used", g.d.UsedIdx(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A heldCase changes the memory layout while a chain whose reply goes to
// region B is held by the worker serving it.
type heldCase struct {
	name   string
	opts   Options
	long   bool // the held chain is long enough for an assistant
	change func(g *heldGuest)
	quicks uint16 // quick chains change publishes
}

var heldLayoutCases = []heldCase{
	{name: "REM_MEM_REG A then B", change: func(g *heldGuest) {
		g.rem(hlA)
		g.rem(hlB)
	}},
	{name: "ADD_MEM_REG C then REM_MEM_REG B", change: func(g *heldGuest) {
		g.add(hlC)
		g.rem(hlB)
	}},
	{name: "ADD_MEM_REG C then SET_MEM_TABLE", change: func(g *heldGuest) {
		g.add(hlC)
		g.setTable(0)
	}},
	// The pool worker that takes the ring while the held chain is
	// served re-binds the ring to the second layout and lets go of it;
	// the third must not unmap the used ring the held chain is returned
	// through.
	{name: "thread pool: SET_MEM_TABLE, a chain, SET_MEM_TABLE", opts: Options{ThreadPoolSize: 2}, change: tableChainTable, quicks: 1},
	// The same with the held chain on an assistant and the ring's own
	// worker re-binding it.
	{name: "assistant: SET_MEM_TABLE, a chain, SET_MEM_TABLE", opts: Options{Assistants: 1}, long: true, change: tableChainTable, quicks: 1},
}

func tableChainTable(g *heldGuest) {
	g.setTable(0, hlA, hlB)
	n := g.d.AvailIdx() // the held chain and n-1 used ones
	g.publish(quick)
	g.waitUsed(n) // all but the held chain
	g.setTable(0, hlA, hlB)
}

// TestHeldLayoutStaysMapped: a worker that holds a memory layout may use
// every region in it, however many layouts the front-end installs and
// drops meanwhile (QEMU sends its REM_MEM_REGs back to back). Each case
// holds a chain as a worker would while the control connection removes or
// replaces regions, then writes the reply into region B through the held
// layout and returns the chain; the reply must land in B's memory and the
// back-end must survive. Once the chain is returned nothing holds the old
// layouts, and the regions they alone mapped must go. Each case runs in a
// process of its own: when memory is unmapped under the back-end, the
// write into it is detected, but the used ring's may kill the process.
func TestHeldLayoutStaysMapped(t *testing.T) {
	if name := os.Getenv(hlCaseEnv); name != "" {
		for _, tc := range heldLayoutCases {
			if tc.name == name {
				runHeldCase(t, tc)
				return
			}
		}
		t.Fatalf("no case %q", name)
	}
	for _, tc := range heldLayoutCases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHeldLayoutStaysMapped$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), hlCaseEnv+"="+tc.name)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the case's process failed (%v):\n%s", err, heldOutput(out))
			}
		})
	}
}

// heldOutput keeps the lines of a failed case's output that tell what
// happened.
func heldOutput(out []byte) string {
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "layout_test.go") || strings.HasPrefix(l, "panic") || strings.HasPrefix(l, "fatal") ||
			strings.HasPrefix(l, "unexpected") || strings.Contains(l, "SIG") || strings.HasPrefix(l, "--- FAIL") ||
			strings.HasPrefix(l, "github.com/govirtiofsd/") {
			keep = append(keep, l)
		}
	}
	if len(keep) > 20 {
		keep = keep[:20]
	}
	return strings.Join(keep, "\n")
}

func runHeldCase(t *testing.T, tc heldCase) {
	fd0, m := testGuest(t, "held-0", 1<<20)
	g := &heldGuest{t: t, m: m, fds: map[uint64]int{0: fd0}}
	for gpa, name := range map[uint64]string{hlA: "held-a", hlB: hlBName, hlC: "held-c"} {
		g.fds[gpa] = testMemfd(t, name, hlRegSize)
	}
	dev := &holdDevice{entered: make(chan uintptr, 1), proceed: make(chan struct{}), wrote: make(chan error, 1)}
	tc.opts.Log = quietLog()
	g.s = newDeviceSession(t, dev, tc.opts)
	if tc.opts.Assistants > 0 {
		time.Sleep(100 * time.Millisecond) // the handoff needs an assistant waiting
	}
	g.setTable(0, hlA, hlB)
	g.d = virtqueue.NewDriver(m, 0, hlRing, 16, false)
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(kick)
	g.kick = kick
	g.s.startRing(1, addrPayload(1, g.d.Addresses(fzUserBase)), kick, -1)

	held := heldChain{tag: 'H', req: 0x50000, reply: hlB, readLen: 16}
	chains := []heldChain{held}
	if tc.long {
		// An assistant takes a long chain only with one behind it.
		held.req, held.readLen = 0x80000, AssistMin
		chains = []heldChain{held, quick}
	}
	g.publish(chains...)
	var buf uintptr
	select {
	case buf = <-dev.entered:
	case <-time.After(fzWait):
		t.Fatal("the held chain was not served")
	}
	tc.change(g)
	close(dev.proceed)
	select {
	case err := <-dev.wrote:
		if err != nil {
			t.Errorf("after the change: %v", err)
		}
	case <-time.After(fzWait):
		t.Fatal("the held chain's handler did not finish")
	}
	g.waitUsed(uint16(len(chains)) + tc.quicks)
	got := make([]byte, len(hlReply))
	if _, err := unix.Pread(g.fds[hlB], got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte(hlReply)) {
		t.Errorf("region B's memory holds %q, not the reply written through the held layout", got)
	}
	// The back-end still serves.
	n := g.d.AvailIdx()
	g.publish(quick)
	g.waitUsed(n + 1)
	// Only the held layout mapped B at buf, and nothing holds it now:
	// the mapping must go.
	deadline := time.Now().Add(fzWait)
	for mapsB(buf) {
		if time.Now().After(deadline) {
			t.Fatalf("region B's mapping at %#x is still mapped after the chain was returned: %s", buf, mappingAt(buf))
		}
		time.Sleep(time.Millisecond)
	}
	g.s.hangUp()
}

// TestIdleRingLetsGo: a running ring holds the memory layout its rings
// were translated in (vring.bound), so that chains served elsewhere are
// returned through mapped memory. An idle ring must not keep a removed
// region mapped until its next chain, which may be long in coming (the
// high-priority queue, a disabled queue): the region goes as soon as the
// front-end removes it, without a chain in flight.
func TestIdleRingLetsGo(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    Options
		disable bool
	}{
		{name: "own workers"},
		{name: "thread pool", opts: Options{ThreadPoolSize: 2}},
		{name: "disabled ring", disable: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd0, m := testGuest(t, "idle-0", 1<<20)
			fillGuest(m, nil)
			const name = "idle-b"
			fdB := testMemfd(t, name, hlRegSize)
			tc.opts.Log = quietLog()
			s := newDeviceSession(t, &fakeDevice{queues: 2}, tc.opts)
			b := region(hlB, hlRegSize, fzUserBase+hlB, 0)
			s.request(SetMemTable, append(append(u32le(2, 0), region(0, 1<<20, fzUserBase, 0)...), b...), true, fd0, fdB)
			for q := uint32(0); q < 2; q++ {
				kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				s.startRing(q, vringAddr(q, int(q)), kick, -1)
				unix.Close(kick)
			}
			// Both rings serve their one chain (fillGuest's), then
			// wait.
			deadline := time.Now().Add(fzWait)
			for q := 0; q < 2; q++ {
				for binary.LittleEndian.Uint16(m[q*fzRingStride+0x2000+2:]) != 1 {
					if time.Now().After(deadline) {
						t.Fatalf("queue %d did not serve its chain", q)
					}
					time.Sleep(time.Millisecond)
				}
			}
			if tc.disable {
				s.request(SetVringEnable, u32le(1, 0), true)
			}
			if n := memfdMappings(name); n != 1 {
				t.Fatalf("%d mappings of region B before REM_MEM_REG, want 1", n)
			}
			if st := s.request(RemMemReg, append(make([]byte, 8), b...), true); st != 0 {
				t.Fatal("REM_MEM_REG refused")
			}
			// At once, or as soon as a worker that was just going
			// idle has given its token up.
			deadline = time.Now().Add(2 * time.Second)
			for memfdMappings(name) != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("region B is still mapped after REM_MEM_REG with the rings idle")
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// memfdMappings counts this process's mappings of the memfd called name.
func memfdMappings(name string) int {
	b, _ := os.ReadFile("/proc/self/maps")
	return strings.Count(string(b), "/memfd:"+name+" (deleted)")
}

// TestRingRegionComesBack: the front-end may remove the region that holds
// a ring's memory and add it again (QEMU reshapes the regions it shares
// on memory hotplug). A ring idle meanwhile must serve on: only a ring
// whose memory is still missing at its next chain is broken.
func TestRingRegionComesBack(t *testing.T) {
	for _, pool := range []int{0, 2} {
		t.Run(fmt.Sprintf("pool%d", pool), func(t *testing.T) {
			fd0, m := testGuest(t, "back-0", 1<<20)
			fdB := testMemfd(t, "back-b", hlRegSize)
			s := newDeviceSession(t, &fakeDevice{queues: 2}, Options{Log: quietLog(), ThreadPoolSize: pool})
			r0 := region(0, 1<<20, fzUserBase, 0)
			s.request(SetMemTable, append(append(u32le(2, 0), r0...), region(hlB, hlRegSize, fzUserBase+hlB, 0)...), true, fd0, fdB)
			d := virtqueue.NewDriver(m, 0, hlRing, 16, false)
			kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(kick)
			s.startRing(1, addrPayload(1, d.Addresses(fzUserBase)), kick, -1)
			// SET_VRING_ENABLE woke the ring's worker: let it go idle
			// (a worker serving between the REM and the ADD finds its
			// memory missing, and the ring broken).
			time.Sleep(50 * time.Millisecond)
			if st := s.request(RemMemReg, append(make([]byte, 8), r0...), true); st != 0 {
				t.Fatal("REM_MEM_REG of the ring's region refused")
			}
			if st := s.request(AddMemReg, append(make([]byte, 8), r0...), true, fd0); st != 0 {
				t.Fatal("ADD_MEM_REG of the ring's region refused")
			}
			g := &heldGuest{t: t, m: m, d: d, kick: kick}
			g.publish(quick)
			g.waitUsed(1)
		})
	}
}
