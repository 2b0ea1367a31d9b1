package fuse

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// What happens when serving a request panics (see Serve). A panic is a bug
// here or in the FileSystem, but one a guest may be able to trigger at
// will, so it must cost the guest that request only: the request is
// answered EIO, the worker's own state is reset, and the daemon serves on.
// Locks taken by the code that panicked are let go only if it unlocks in a
// defer; the server's own are (INIT and DESTROY hold s.mu in a function
// that defers its unlock).
//
// The log gets one line, with the stack, the first time a site panics for
// an opcode, and then one line when the count for that site reaches 10,
// 100, 1000 and so on: a guest that repeats a panicking request in a loop
// cannot flood it.

// panicSitesMax bounds the distinct sites remembered; panics at further
// sites are counted together.
const panicSitesMax = 64

// panicSite is where a panic happened, for one opcode.
type panicSite struct {
	opcode uint32
	site   string // function and file:line of the frame that panicked
}

// panicLog counts the panics of a server's requests.
type panicLog struct {
	total atomic.Uint64
	mu    sync.Mutex
	sites map[panicSite]uint64
	other uint64 // panics at sites beyond panicSitesMax
}

// Panics returns how many requests panicked while being served (and were
// answered EIO instead). It is 0 unless there is a bug to fix.
func (s *Server) Panics() uint64 { return s.panics.total.Load() }

// recovered cleans up after a request whose serving panicked with p, logs
// it, and answers it: EIO, or nothing for a request without a reply or
// whose header was not decoded. It returns the bytes written to out.
func (w *Worker) recovered(p any, out [][]byte) uint32 {
	// Drop what the handler may have left behind: slices of guest memory
	// (READ, WRITE), the listing buffer, extensions.
	clear(w.segs[:cap(w.segs)])
	w.segs = w.segs[:0]
	w.dir.reset(nil, false)
	w.ext = Extensions{}
	w.extArea = nil
	w.args = nil

	h := w.h
	opcode := uint32(0)
	if h != nil {
		opcode = h.Opcode
	}
	w.s.notePanic(opcode, h, p)
	if h == nil || (opcode < uint32(len(ops)) && ops[opcode].noReply) {
		return 0
	}
	// A well-formed error reply, whatever the handler had written to out
	// before it panicked: the guest reads no further than its length.
	// It is built on the stack, touching none of the worker's buffers.
	if total(out) < outHeaderSize {
		return 0
	}
	var oh fuse.OutHeader
	oh.Length = uint32(outHeaderSize)
	oh.Status = -int32(syscall.EIO)
	oh.Unique = h.Unique
	return uint32(scatter(out, unsafe.Slice((*byte)(unsafe.Pointer(&oh)), outHeaderSize), 0))
}

// notePanic counts a panic with value p while serving opcode (h is the
// request's header, nil if it was not decoded yet) and logs it as panicLog
// allows.
func (s *Server) notePanic(opcode uint32, h *fuse.InHeader, p any) {
	s.panics.total.Add(1)
	site := panicSite{opcode: opcode, site: panicFrame()}
	l := &s.panics
	l.mu.Lock()
	if l.sites == nil {
		l.sites = make(map[panicSite]uint64)
	}
	var n uint64
	if _, ok := l.sites[site]; ok || len(l.sites) < panicSitesMax {
		l.sites[site]++
		n = l.sites[site]
	} else {
		l.other++
		n = l.other
		site.site = "other sites"
	}
	l.mu.Unlock()
	if !logPanicAt(n) {
		return
	}
	req := "a request whose header was not decoded"
	if h != nil {
		req = fmt.Sprintf("%s (opcode %d, unique %d, node %d)", OpName(opcode), opcode, h.Unique, h.NodeId)
	}
	if n == 1 {
		s.log.Errorf("BUG: serving %s panicked at %s: %v; answered EIO, serving on (further panics here are counted, not logged)\n%s",
			req, site.site, p, debug.Stack())
		return
	}
	s.log.Errorf("BUG: %s has panicked %d times at %s (last: %v); each answered EIO", OpName(opcode), n, site.site, p)
}

// logPanicAt reports whether the nth panic at a site is logged: the
// first, and each power of ten.
func logPanicAt(n uint64) bool {
	for n >= 10 && n%10 == 0 {
		n /= 10
	}
	return n == 1
}

// panicFrame returns the function and file:line that panicked, found on
// the stack of the deferred recovery: the first frame below the runtime's
// panic machinery (gopanic and the runtime functions that raise index,
// nil and conversion errors).
func panicFrame() string {
	var pcs [64]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs[:])])
	inPanic := false
	for {
		f, more := frames.Next()
		switch {
		case f.Function == "runtime.gopanic":
			inPanic = true
		case inPanic && !strings.HasPrefix(f.Function, "runtime."):
			return fmt.Sprintf("%s (%s:%d)", f.Function, f.File, f.Line)
		}
		if !more {
			return "an unknown site"
		}
	}
}
