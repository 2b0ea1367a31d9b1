package vhostuser

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// notifyBatch bounds how many chains a worker completes before it checks
// whether the driver wants an interrupt. A driver that waits for replies
// to send more requests refills the ring while the rest of a batch is
// served, so telling it early pays: through the harness at 16 requests in
// flight, 4 served 1.7x the GETATTRs and READs per second of 32, and more
// than 2 or 8 did. With EVENT_IDX the driver still decides whether it is
// interrupted.
const notifyBatch = 4

var eventOne = [8]byte{1}

// AssistMin is the least a chain carries to the device (its readable
// part) for an assistant (Options.Assistants) to serve it. Such a chain is
// a long copy, such as a large WRITE: while an assistant copies it, the
// queue's worker serves the chains behind it, on another CPU. A chain with
// none behind it is served where it is.
const AssistMin = 256 << 10

// vring is the state of one queue as the front-end configured it, plus the
// worker that serves it while it runs.
type vring struct {
	b     *Backend
	index int

	// Configuration, touched only by the control goroutine.
	num     uint32
	base    uint16
	addr    virtqueue.Addresses
	addrSet bool
	kick    int
	errFd   int
	running bool
	done    chan struct{}

	enabled    atomic.Bool
	needEnable bool // set at start: rings wait for SET_VRING_ENABLE
	stopping   atomic.Bool
	broken     atomic.Bool // the ring's memory went away
	wake       int         // eventfd the control goroutine uses to wake the worker

	// mu guards the used side of q, the call descriptor and bound.
	mu   sync.Mutex
	q    *virtqueue.Queue
	call int
	// bound is the memory layout q's rings were translated in, with a
	// reference: whoever returns a chain writes the used ring through q
	// (under mu), and may hold only the chain's own, older layout. It
	// changes under mu: in start and stop, and in bind by the token's
	// holder (follow, or rebind).
	bound atomic.Pointer[memState]

	// The token (see serve): held by whoever pops the ring's chains.
	owned    atomic.Bool
	kicked   atomic.Bool                     // a kick came while the token was held
	held     *memState                       // the holder's memory layout
	inflight sync.WaitGroup                  // tokens out and chains being served
	free     chan *virtqueue.DescriptorChain // chains to replace those handed to assistants
	handler  Handler
	guestErr atomic.Uint64
	usedLog  atomic.Uint64 // used ring guest-physical address | 1 when logged (dirtylog.go)
}

func newVring(b *Backend, index int) *vring {
	return &vring{b: b, index: index, kick: -1, call: -1, errFd: -1, wake: -1}
}

func closeFd(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
		*fd = -1
	}
}

func (v *vring) setNum(num uint32) error {
	if v.running {
		return fmt.Errorf("queue %d: SET_VRING_NUM while running", v.index)
	}
	if num == 0 || num > virtqueue.MaxSize || num&(num-1) != 0 {
		return fmt.Errorf("queue %d: size %d is not a power of two up to %d", v.index, num, virtqueue.MaxSize)
	}
	v.num = num
	return nil
}

func (v *vring) setBase(base uint32) error {
	if v.running {
		return fmt.Errorf("queue %d: SET_VRING_BASE while running", v.index)
	}
	v.base = uint16(base)
	return nil
}

func (v *vring) setAddr(a virtqueue.Addresses) error {
	v.addr, v.addrSet = a, true
	if !v.running {
		return nil
	}
	// Only the worker touches a running ring: restart it on the new
	// addresses.
	v.stop()
	return v.start()
}

func (v *vring) setEnable(on bool) error {
	v.enabled.Store(on)
	v.poke()
	return nil
}

func (v *vring) poke() {
	if v.wake >= 0 {
		unix.Write(v.wake, eventOne[:])
	}
}

// notifierFd checks a kick, call or error descriptor from the front-end
// and makes it non-blocking. Only an anonymous inode (an eventfd is one)
// is accepted: the workers wait on, read and write these descriptors with
// raw system calls, and a pipe, socket, FIFO or regular file could block
// them there (a full pipe as call descriptor, a socket whose read waits
// for more than ppoll reported) or never stop being readable (a file at
// its end). Non-blocking, a call write to an eventfd whose counter is at
// its maximum fails with EAGAIN instead of waiting for the front-end to
// read it.
func notifierFd(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("notification descriptor: %w", err)
	}
	if st.Mode&unix.S_IFMT != 0 {
		return fmt.Errorf("notification descriptor is not an eventfd (file mode %#o)", st.Mode)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("notification descriptor: %w", err)
	}
	return nil
}

func (v *vring) setCall(fd int) {
	v.mu.Lock()
	old := v.call
	v.call = fd
	v.mu.Unlock()
	closeFd(&old)
}

func (v *vring) setErr(fd int) {
	closeFd(&v.errFd)
	v.errFd = fd
}

func (v *vring) setKick(fd int) error {
	if v.running {
		v.stop()
	}
	closeFd(&v.kick)
	v.kick = fd
	if fd < 0 {
		return fmt.Errorf("queue %d: polling mode (kick without a descriptor) is not supported", v.index)
	}
	return v.start()
}

// start launches the worker once the ring is fully described.
func (v *vring) start() error {
	if v.num == 0 || !v.addrSet {
		return fmt.Errorf("queue %d: kick before size and addresses", v.index)
	}
	if v.b.transferRunning() {
		// The device's LoadState or SaveState has it to itself.
		return fmt.Errorf("queue %d: start while the device state is being transferred", v.index)
	}
	mem := v.b.acquireMem()
	if mem == nil {
		return fmt.Errorf("queue %d: kick before the memory table", v.index)
	}
	q, err := virtqueue.NewQueue(uint16(v.num), v.base, v.b.acked&FeatureEventIdx != 0)
	if err != nil {
		mem.release()
		return fmt.Errorf("queue %d: %w", v.index, err)
	}
	if err := q.Translate(mem.table, v.addr); err != nil {
		mem.release()
		return fmt.Errorf("queue %d: %w", v.index, err)
	}
	if v.wake < 0 {
		if v.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			mem.release()
			return fmt.Errorf("queue %d: eventfd: %w", v.index, err)
		}
	}
	v.needEnable = v.b.acked&FeatureProtocolFeatures != 0
	v.broken.Store(false)
	v.stopping.Store(false)
	v.mu.Lock()
	v.q = q
	v.bound.Store(mem) // the reference goes to bound
	v.mu.Unlock()
	if v.b.assist != nil && v.index != 0 && v.free == nil {
		v.free = make(chan *virtqueue.DescriptorChain, v.num)
	}
	if v.handler == nil && !v.shared() {
		v.handler = v.b.dev.NewHandler()
	}
	v.running = true
	v.done = make(chan struct{})
	addProcs(1)
	go v.run(q, v.kick)
	return nil
}

// stop ends the worker, waits for every chain in flight and returns the
// next available index.
func (v *vring) stop() uint16 {
	if !v.running {
		return v.base
	}
	v.stopping.Store(true)
	v.poke()
	<-v.done
	addProcs(-1)
	v.inflight.Wait()
	v.mu.Lock()
	v.base = v.q.NextAvail()
	v.q = nil
	bound := v.bound.Swap(nil)
	v.mu.Unlock()
	if bound != nil {
		bound.release()
	}
	v.running = false
	return v.base
}

// reset returns the ring to its initial state.
func (v *vring) reset() {
	v.stop()
	closeFd(&v.wake)
	closeFd(&v.kick)
	closeFd(&v.errFd)
	v.setCall(-1)
	v.num, v.base, v.addrSet = 0, 0, false
	v.enabled.Store(false)
}

// follow moves the token holder to the current memory layout, re-binding
// the ring to it. It returns the layout held (nil when there is none or the
// ring's memory is gone).
func (v *vring) follow(q *virtqueue.Queue, held *memState) *memState {
	if held != nil && v.b.mem.Load() == held {
		return held
	}
	if held != nil {
		held.release()
	}
	mem := v.b.acquireMem()
	if mem == nil {
		return nil
	}
	// Only the token holder changes bound while the ring runs.
	if mem == v.bound.Load() {
		return mem
	}
	err := v.bind(q, mem)
	if err == nil {
		return mem
	}
	v.b.log.Errorf("queue %d after a memory change: %v", v.index, err)
	mem.release()
	// q still points into the bound layout's memory: once broken is set
	// (under mu, where complete looks) nothing touches it, and the layout
	// may go.
	v.mu.Lock()
	v.broken.Store(true)
	old := v.bound.Swap(nil)
	v.mu.Unlock()
	if old != nil {
		old.release()
	}
	return nil
}

// bind translates q's rings in mem, a layout the caller holds, and makes
// it the ring's bound one, letting go of the one before. When the rings
// are not all in mem nothing changes. The caller holds the token.
func (v *vring) bind(q *virtqueue.Queue, mem *memState) error {
	v.mu.Lock()
	err := q.Translate(mem.table, v.addr)
	var old *memState
	if err == nil {
		mem.addRef()
		old = v.bound.Swap(mem)
	}
	v.mu.Unlock()
	if err != nil {
		return err
	}
	if old != nil {
		old.release()
	}
	return nil
}

// rebind moves a running ring whose token is free to mem, the current
// layout, which the caller holds: the control goroutine when it installs
// one, or a holder that just gave the token up (release). So an idle ring
// is bound to the current layout, and the one before is let go now rather
// than at the ring's next chain, which may be long in coming. A ring
// whose token is held is moved by its holder (follow, release), and one
// whose rings are not in mem is left as it is: the front-end may be about
// to add their region again, and only at its next chain is the ring found
// broken. Taking the token for a moment wakes no worker: the ring's own
// worker waits for it (run), and a kick the pool's summon found it taken
// for is passed on here, as letGo does.
func (v *vring) rebind(q *virtqueue.Queue, mem *memState) {
	if v.broken.Load() || !v.owned.CompareAndSwap(false, true) {
		return
	}
	if mem != v.bound.Load() {
		v.bind(q, mem) // on failure the ring keeps the layout its rings are in
	}
	v.owned.Store(false)
	if v.shared() && v.kicked.Load() && v.owned.CompareAndSwap(false, true) {
		v.post()
	}
}

func (v *vring) run(q *virtqueue.Queue, kick int) {
	// The worker keeps its thread, and while it waits for a kick its P
	// (see below). Handlers lock the thread themselves around what
	// changes its state (credentials, umask, working directory).
	runtime.LockOSThread()
	debug.SetPanicOnFault(true) // see fault
	defer close(v.done)
	fds := []unix.PollFd{{Fd: int32(kick), Events: unix.POLLIN}, {Fd: int32(v.wake), Events: unix.POLLIN}}
	var buf [8]byte
	own := virtqueue.NewDescriptorChain(64)
	for !v.stopping.Load() {
		if !v.needEnable || v.enabled.Load() {
			if v.shared() {
				v.summon()
			} else {
				for !v.owned.CompareAndSwap(false, true) {
					runtime.Gosched() // the control goroutine re-binds the ring (rebind)
				}
				v.inflight.Add(1)
				v.serve(q, v.handler, &own)
			}
		}
		began := time.Now()
		err := waitRaw(fds)
		if err == unix.EINTR && !v.stopping.Load() && time.Since(began) >= idleWait && !v.owned.Load() {
			// The runtime interrupted a long wait (see below),
			// and no pool worker is serving the ring meanwhile:
			// the queue is idle, so wait without holding the P.
			err = waitBlocking(fds)
		}
		if err != nil && err != unix.EINTR {
			v.b.log.Errorf("queue %d: poll: %v", v.index, err)
			return
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			// A kick descriptor in error would wake every ppoll
			// at once: wait for the control goroutine only.
			v.b.log.Errorf("queue %d: kick descriptor in error (poll events %#x); no longer waiting for kicks", v.index, fds[0].Revents)
			fds[0].Fd = -1
		}
		for i := range fds {
			if fds[i].Fd >= 0 && fds[i].Revents&unix.POLLIN != 0 {
				// Both are non-blocking (notifierFd): a read
				// that finds nothing (EAGAIN) goes back to
				// waiting. Any other error is a kick
				// descriptor that is no eventfd but an
				// anonymous inode of another kind (an epoll
				// descriptor is readable for good and its read
				// fails): stop waiting on it, as on POLLERR.
				if _, err := unix.Read(int(fds[i].Fd), buf[:]); err != nil && err != unix.EAGAIN && err != unix.EINTR && i == 0 {
					v.b.log.Errorf("queue %d: kick descriptor unreadable (%v); no longer waiting for kicks", v.index, err)
					fds[0].Fd = -1
				}
			}
		}
	}
}

// Waiting for a kick.
//
// A worker sleeps in ppoll between requests. Through the usual system-call
// path the Go scheduler counts the worker's P as blocked: sysmon takes it
// away after 20 µs, and the worker has to get one back (waking sysmon)
// when the kick arrives. With a guest that sends one request at a time
// that is every request, and those wake-ups are paid on the cores the
// guest's vCPUs need: in the real-guest benchmark the daemon made 2.4
// times the context switches of the reference and used 1.5 times its CPU.
// So the worker waits with a raw system call and keeps its P, and every
// running worker adds one to GOMAXPROCS, leaving the rest of the program
// the Ps it had. The runtime still reaches a waiting worker: its
// preemption signal ends the ppoll (which is never restarted) with EINTR.
//
// That signal comes every 10 ms that the worker looks busy (sysmon
// preempts such a goroutine), so on an idle queue it would come every
// 10 ms, each time handing the locked thread's P off and back, with sysmon
// itself kept awake to watch the P. So when it ends a wait that has
// lasted idleWait, the worker waits on through the ordinary system-call
// path until the next kick: sysmon retakes the P once, and when every P is
// idle sysmon sleeps too, so an idle daemon makes no wake-ups of its own.
// A signal that ends a short wait comes from a busy stretch, and the
// worker stays on the raw path: sparing sysmon a P to retake, which would
// keep it waking every 20 µs for a while on the CPUs the requests need.
// (Parking in the runtime's poller instead was tried: an idle daemon was
// as quiet, but a guest run made 1.7 times the context switches, a parked
// locked goroutine being woken through another thread.)

// idleWait is how long a wait must have lasted, when the runtime's signal
// ends it, for the worker to go on waiting the ordinary way.
const idleWait = 5 * time.Millisecond

// procsMu serialises changes of GOMAXPROCS.
var procsMu sync.Mutex

// addProcs changes GOMAXPROCS by delta.
func addProcs(delta int) {
	procsMu.Lock()
	runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)+delta))
	procsMu.Unlock()
}

// waitBlocking waits for fds as an ordinary blocking system call.
func waitBlocking(fds []unix.PollFd) error {
	_, err := unix.Ppoll(fds, nil, nil)
	return err
}

// waitRaw waits for fds without the scheduler's system-call bookkeeping.
func waitRaw(fds []unix.PollFd) error {
	_, _, e := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), 0, 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// Serving a ring.
//
// Whoever pops a ring's chains holds its token (vring.owned), so chains are
// popped in order by one goroutine at a time. Without a thread pool the
// ring's worker takes the token whenever it wakes, and serves until the
// ring is empty. With a pool (a shared ring), the ring's worker only waits
// for kicks and sends the ring to the pool (Backend.ready) when the token
// is free. The pool worker that receives it pops one chain and, before
// serving it, passes the ring on through the same channel when more chains
// wait, or else (in a pool of more than one) gives the token up with
// notifications enabled, so that the next chain wakes whichever worker is
// free, however long this one's takes. So a chain stays in the ring until
// a worker is free to serve it, and a pool of one, which keeps the token
// while it serves, serves a busy ring without a single handoff between
// threads. A kick that finds the token taken sets kicked; a holder that
// gives the token up looks at it afterwards, so no kick is lost in
// between.

// shared reports whether the pool serves the ring.
func (v *vring) shared() bool { return v.b.ready != nil && v.index != 0 }

// summon sends the ring to the pool unless a holder has it; that one sees
// the kick when it gives the token up.
func (v *vring) summon() {
	v.kicked.Store(true)
	if v.owned.CompareAndSwap(false, true) {
		v.post()
	}
}

// post sends the ring, with its token, to the pool.
func (v *vring) post() {
	v.inflight.Add(1)
	v.b.ready <- v
}

// serve pops the ring's chains and serves them with h while it holds the
// token, which the caller took together with an in-flight count. It
// returns once it has given the token up or passed it on, and drops the
// count. *own is the chain it pops into; it is replaced when an assistant
// takes it.
func (v *vring) serve(q *virtqueue.Queue, h Handler, own **virtqueue.DescriptorChain) {
	// What to give back if guest memory faults (see fault): the token
	// while it is held, and the reference taken for a chain served
	// after the token was passed on.
	holding, extra := true, (*memState)(nil)
	defer func() {
		if p := recover(); p != nil {
			v.fault(p)
			if extra != nil {
				extra.release()
			}
			if holding {
				v.release()
			}
		}
		v.inflight.Done()
	}()
	shared := v.shared()
	assisted := v.b.assist != nil && v.index != 0
	v.kicked.Store(false)
	sinceNotify := 0
	for {
		if v.stopping.Load() || v.broken.Load() {
			v.release()
			return
		}
		if v.held = v.follow(q, v.held); v.held == nil {
			v.release()
			return
		}
		mem, c := v.held, *own
		ok, err := q.Pop(mem.table, c)
		if !ok {
			if err != nil {
				v.guestError(err)
				v.release()
				return
			}
			if !shared {
				v.flush(q)
				sinceNotify = 0
			}
			if v.index != 0 && v.b.opts.Poll > 0 && v.poll(q) {
				continue
			}
			if v.letGo(q) {
				return
			}
			continue
		}
		if err != nil {
			v.guestError(err)
			// A bad head has nothing to return: the driver never
			// made such a chain available.
			if !errors.Is(err, virtqueue.ErrBadHead) {
				v.complete(c, mem, 0, shared)
			}
			continue
		}
		// Only with chains waiting behind it: a driver that sends one
		// request at a time gains nothing from the handoff.
		if assisted && c.ReadableLen >= AssistMin && q.Pending() && v.hand(c, mem) {
			*own = v.chain()
			continue
		}
		if shared {
			// Let the pool take the ring while c is served, unless
			// a pool of one would only hand it to itself.
			more := q.Pending()
			if !more && v.b.opts.ThreadPoolSize == 1 {
				v.complete(c, mem, h.Handle(v.index, c), true)
				continue
			}
			mem.addRef()
			extra = mem
			if more || !v.letGo(q) {
				v.post()
			}
			holding = false
			v.complete(c, mem, h.Handle(v.index, c), true)
			extra = nil
			mem.release()
			return
		}
		v.complete(c, mem, h.Handle(v.index, c), false)
		if sinceNotify++; sinceNotify >= notifyBatch {
			v.flush(q)
			sinceNotify = 0
		}
	}
}

// letGo gives the token up once the ring is empty with notifications
// enabled. It reports false, keeping the token, when chains arrived
// meanwhile.
func (v *vring) letGo(q *virtqueue.Queue) bool {
	pending := q.EnableNotification()
	if v.b.dirty.on.Load() {
		v.logRing()
	}
	if pending {
		return false
	}
	v.release()
	if v.kicked.Load() && v.owned.CompareAndSwap(false, true) {
		v.post()
	}
	return true
}

// release gives the token up, with the memory reference it holds. A
// memory change that came while the token was held found the ring taken
// (rebind); it is caught up with here.
func (v *vring) release() {
	if v.held != nil {
		v.held.release()
		v.held = nil
	}
	v.owned.Store(false)
	if cur := v.b.mem.Load(); cur != nil && cur != v.bound.Load() && !v.stopping.Load() {
		if mem := v.b.acquireMem(); mem != nil {
			v.rebind(v.q, mem)
			mem.release()
		}
	}
}

// hand sends c to an idle assistant, which completes it and drops the
// memory reference the chain holds, and reports whether one took it.
func (v *vring) hand(c *virtqueue.DescriptorChain, mem *memState) bool {
	// The references are taken first: the assistant may finish before
	// the send returns.
	mem.addRef()
	v.inflight.Add(1)
	select {
	case v.b.assist <- work{v: v, c: c, mem: mem}:
		return true
	default:
		mem.release()
		v.inflight.Done()
		return false
	}
}

// poll watches the ring for up to Options.Poll and reports whether the
// driver made something available meanwhile.
func (v *vring) poll(q *virtqueue.Queue) bool {
	deadline := time.Now().Add(v.b.opts.Poll)
	for i := 0; !v.stopping.Load() && !v.broken.Load(); i++ {
		if q.Pending() {
			return true
		}
		if i%64 == 63 && time.Now().After(deadline) {
			return false
		}
	}
	return false
}

func (v *vring) chain() *virtqueue.DescriptorChain {
	select {
	case c := <-v.free:
		return c
	default:
		return virtqueue.NewDescriptorChain(64)
	}
}

// complete returns c to the driver; with notify it also interrupts the
// driver if it asked for it. The caller holds a reference to mem, the
// memory layout the chain came from.
func (v *vring) complete(c *virtqueue.DescriptorChain, mem *memState, n uint32, notify bool) {
	v.pushUsed(c.Head, n, notify)
	if v.b.dirty.on.Load() {
		v.logWrites(c, mem, n)
	}
}

// pushUsed is complete's part under mu, unlocked in a defer: the used
// ring may fault (see fault).
func (v *vring) pushUsed(head uint16, n uint32, notify bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.q != nil && !v.broken.Load() {
		v.q.PushUsed(head, n)
		if notify && v.q.NeedsNotify() {
			v.signalLocked()
		}
	}
}

// Guest memory that faults.
//
// Guest memory is the front-end's shared memory, and the front-end may
// shrink the file behind it after the memory table was checked: touching
// the part past the new end raises SIGBUS, which by default kills the
// daemon. So every goroutine that touches guest memory (ring workers, pool
// workers, assistants; the dirty log is written by them too) runs with
// debug.SetPanicOnFault: the fault becomes a panic, which serve (or the
// assistant) recovers. The ring is then marked broken, as one whose memory
// went away, and nothing touches its rings again until the front-end
// starts it anew; the daemon and the other rings serve on. Whatever holds
// a lock around guest memory accesses lets it go in a defer (pushUsed,
// flush, the dirty log's references in logWrites).

// memoryFault is the panic value of a faulting access under
// debug.SetPanicOnFault.
type memoryFault interface {
	error
	Addr() uintptr
}

// fault handles the panic p recovered while serving the ring: a memory
// fault marks the ring broken, logged once; anything else is panicked
// again.
func (v *vring) fault(p any) {
	f, ok := p.(memoryFault)
	if !ok {
		panic(p)
	}
	v.mu.Lock()
	first := !v.broken.Swap(true)
	v.mu.Unlock()
	if first {
		v.b.log.Errorf("queue %d: guest memory fault at %#x (%v); the ring is stopped until the front-end starts it again", v.index, f.Addr(), f)
	}
}

func (v *vring) recycle(c *virtqueue.DescriptorChain) {
	if v.free == nil {
		return
	}
	select {
	case v.free <- c:
	default:
	}
}

// flush interrupts the driver if it wants to hear of the entries used so
// far. The caller holds a memory reference.
func (v *vring) flush(q *virtqueue.Queue) {
	v.mu.Lock()
	defer v.mu.Unlock() // the available ring may fault (see fault)
	if q.NeedsNotify() {
		v.signalLocked()
	}
}

func (v *vring) signalLocked() {
	if v.call >= 0 {
		// The call descriptor is a non-blocking eventfd
		// (notifierFd): the write never blocks, so the scheduler's
		// system-call bookkeeping is skipped. When its counter is
		// full (EAGAIN) the driver has an interrupt pending
		// anyway, and the write is not retried.
		syscall.RawSyscall(unix.SYS_WRITE, uintptr(v.call), uintptr(unsafe.Pointer(&eventOne[0])), 8)
	}
}

func (v *vring) guestError(err error) {
	n := v.guestErr.Add(1)
	if n <= 10 || n%1000 == 0 {
		v.b.log.Warnf("queue %d: bad descriptor chain from the guest (%d so far): %v", v.index, n, err)
	}
}

func fileFromFd(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }
