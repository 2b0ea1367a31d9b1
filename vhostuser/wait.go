package vhostuser

import (
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

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
				v.serve(q, v.parker, &own)
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
// guest's vCPUs need: in the real-guest benchmark the daemon made far
// more context switches than the reference and used more CPU (see
// docs/perf.md, section "vhostuser: the wait loop and the scheduler").
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
// as quiet, but a guest run made more context switches, a parked locked
// goroutine being woken through another thread; see docs/perf.md, section
// "vhostuser: the wait loop and the scheduler".)

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
