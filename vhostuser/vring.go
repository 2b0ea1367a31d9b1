package vhostuser

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

var eventOne = [8]byte{1}

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
	parker   *Parker // the ring's own worker's
	parkState
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
		v.parker = newParker(v.handler)
	}
	v.running = true
	v.done = make(chan struct{})
	addProcs(1)
	go v.run(q, v.kick)
	return nil
}

// stop ends the worker, waits for every chain in flight, has the device
// end the parked ones (drainParked) and returns the next available index.
func (v *vring) stop() uint16 {
	if !v.running {
		return v.base
	}
	v.stopping.Store(true)
	v.poke()
	<-v.done
	addProcs(-1)
	v.inflight.Wait()
	v.drainParked()
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

func fileFromFd(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }
