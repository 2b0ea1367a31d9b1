package passthrough

import (
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A large READ is one long copy from the host page cache into guest
// memory, bound by how fast one CPU copies. The worker serving it hands
// the second half of the range to an idle helper thread and copies the
// first half itself, so that two CPUs copy at once. The request is still
// served, and answered, by the worker that took it. Writes are not split:
// the host file system serialises buffered writes to one file anyway.
// Large writes to different files run side by side instead, on the ring
// worker and its assistants (vhostuser.Options.Assistants).
//
// A helper is an OS thread of its own that sleeps in a blocking read of
// an eventfd: the worker's eventfd write wakes it at once, without a trip
// through the Go scheduler.

// splitMin is the smallest read that is split.
const splitMin = 256 << 10

// splitHelper copies one half-range: the worker fills iov, fd and off,
// writes workFd and reads doneFd, after which n and e hold the result.
type splitHelper struct {
	iov            [maxIovecs]unix.Iovec
	cnt            int
	fd             int
	off            int64
	n              int
	e              syscall.Errno
	workFd, doneFd int
}

var (
	splitOnce sync.Once
	splitIdle chan *splitHelper // nil when there is one CPU only
)

var eventOne = [8]byte{1}

// splitHelpers starts the helpers on first use: one fewer than the CPUs
// Go may use, so that a worker and its helper run side by side.
func splitHelpers() chan *splitHelper {
	splitOnce.Do(func() {
		n := runtime.GOMAXPROCS(0) - 1
		if n < 1 {
			return
		}
		idle := make(chan *splitHelper, n)
		for i := 0; i < n; i++ {
			h := &splitHelper{}
			var err error
			if h.workFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
				return
			}
			if h.doneFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
				unix.Close(h.workFd)
				return
			}
			go h.serve()
			idle <- h
		}
		splitIdle = idle
	})
	return splitIdle
}

func (h *splitHelper) serve() {
	runtime.LockOSThread()
	var buf [8]byte
	for {
		if _, _, e := syscall.Syscall(unix.SYS_READ, uintptr(h.workFd), uintptr(unsafe.Pointer(&buf[0])), 8); e != 0 {
			if e == syscall.EINTR {
				continue
			}
			return
		}
		h.n, h.e = preadvAll(h.fd, h.iov[:h.cnt], h.off)
		syscall.RawSyscall(unix.SYS_WRITE, uintptr(h.doneFd), uintptr(unsafe.Pointer(&eventOne[0])), 8)
	}
}

// wait sleeps until the helper is done.
func (h *splitHelper) wait() {
	var buf [8]byte
	for {
		_, _, e := syscall.Syscall(unix.SYS_READ, uintptr(h.doneFd), uintptr(unsafe.Pointer(&buf[0])), 8)
		if e != syscall.EINTR {
			return
		}
	}
}

// preadvAll reads into iov at off. A short read from a regular file is
// end of file.
func preadvAll(fd int, iov []unix.Iovec, off int64) (int, syscall.Errno) {
	for {
		n, _, e := syscall.Syscall6(unix.SYS_PREADV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), uintptr(off), uintptr(off>>32>>32), 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// readSplit reads segs at off like rwv, on two CPUs when the read is large
// and a helper is idle. It reports false, having done nothing, otherwise.
// It may change segs, the worker's scratch, but restores it.
func readSplit(fd int, segs [][]byte, off int64) (int, syscall.Errno, bool) {
	total := 0
	for _, s := range segs {
		total += len(s)
	}
	if total < splitMin {
		return 0, 0, false
	}
	idle := splitHelpers()
	if idle == nil {
		return 0, 0, false
	}
	var h *splitHelper
	select {
	case h = <-idle:
	default:
		return 0, 0, false
	}
	// The first half ends on a page boundary, inside segment i at byte k.
	half := total / 2 &^ 4095
	i, k := 0, half
	for k >= len(segs[i]) {
		k -= len(segs[i])
		i++
	}
	// The helper takes segs[i][k:] and everything after it.
	tail := segs[i][k:]
	h.iov[0].Base = &tail[0]
	h.iov[0].SetLen(len(tail))
	if rest := len(segs) - i - 1; 1+rest > len(h.iov) {
		idle <- h
		return 0, 0, false
	}
	h.cnt = 1 + iovecs(h.iov[1:], segs[i+1:])
	h.fd, h.off = fd, off+int64(half)
	syscall.RawSyscall(unix.SYS_WRITE, uintptr(h.workFd), uintptr(unsafe.Pointer(&eventOne[0])), 8)
	whole := segs[i]
	segs[i] = whole[:k]
	n, e := rwv(fd, segs[:i+1], off, false)
	segs[i] = whole
	h.wait()
	n2, e2 := h.n, h.e
	idle <- h
	switch {
	case e != 0:
		return 0, e, true
	case n < half:
		return n, 0, true // end of file in the first half
	case e2 != 0:
		return n, 0, true
	}
	return n + n2, 0, true
}
