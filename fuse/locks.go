package fuse

import (
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Locks: GETLK, SETLK and SETLKW, for POSIX record locks (and OFD locks,
// which Linux sends the same way, the open file as owner) and, with
// FUSE_LK_FLOCK in lk_flags, flock. A FileSystem serves them when it is a
// LockFileSystem; otherwise they are answered ENOSYS and the guest keeps
// its locks to itself (nor are POSIX_LOCKS and FLOCK_LOCKS offered).
//
// A SETLKW whose lock is taken must wait, for as long as the holder
// likes, and its worker must not wait with it: the server parks the
// request (Parker, from the transport), gives the wait to the FileSystem
// (WaitLk) and returns; the FileSystem ends the wait (LockWait.Done) from
// a goroutine of its own, and the reply goes out then. A parked wait ends
// with EINTR when the guest interrupts it (INTERRUPT naming its unique)
// and when the session ends (the FileSystem's Destroy cancels every wait),
// and with ENOLCK when the transport needs the request back (its ring
// stops: Canceler). A ring stops when the VM is paused or migrated, with
// no signal pending in the guest, and Linux turns a SETLKW's EINTR into a
// restart that, without a signal, reaches the program as errno 512: an
// error the program knows, ENOLCK, is the better answer there.
// FLUSH and RELEASE end the lock owner's hold on the node
// (LockFileSystem.ReleaseOwner).

const (
	opGetlk  = 31
	opSetlk  = 32
	opSetlkw = 33
)

// LockFileSystem is a FileSystem that serves locks.
type LockFileSystem interface {
	// LockCaps returns which of CAP_POSIX_LOCKS and CAP_FLOCK_LOCKS the
	// FileSystem serves, for INIT to offer.
	LockCaps() uint64
	// GetLk serves GETLK: it fills out with a lock that would conflict
	// with in.Lk for in.Owner on in.NodeId's file (in.Fh a handle of
	// it), or out.Lk.Typ F_UNLCK when there is none.
	GetLk(in *fuse.LkIn, out *fuse.LkOut) Status
	// SetLk serves SETLK, and is a SETLKW's first try: it takes,
	// changes or drops in.Lk for in.Owner without waiting (with
	// FUSE_LK_FLOCK in in.LkFlags, a flock of handle in.Fh). A lock
	// held by someone else is EAGAIN.
	SetLk(in *fuse.LkIn) Status
	// WaitLk takes over a SETLKW whose SetLk found the lock held. It
	// reports false with the answer when there is nothing to wait for
	// (the lock was let go meanwhile, or the request fails); true when
	// it keeps w, and then it calls w.Done exactly once, from any
	// goroutine and possibly before WaitLk returns, when the lock is
	// granted, the request fails, or the wait is cancelled (CancelLk,
	// Destroy, ReleaseOwner). in is w.In.
	WaitLk(in *fuse.LkIn, w *LockWait) (bool, Status)
	// CancelLk ends w's wait with w.CancelStatus() (w.Done) unless it
	// is over. It must not block: it is called on the transport's
	// control goroutine.
	CancelLk(w *LockWait)
	// ReleaseOwner drops the POSIX locks owner holds on nodeID's file
	// and ends its waits there with EINTR: FLUSH (the guest closed a
	// descriptor of the file; POSIX locks go with any close by their
	// owner) and RELEASE (owner is its lock_owner, 0 without
	// FUSE_RELEASE_FLOCK_UNLOCK). At RELEASE (release set) it also
	// ends the flock waits of handle fh and, with flockUnlock, drops
	// the handle's flock, before the FileSystem's Release.
	ReleaseOwner(nodeID, fh, owner uint64, release, flockUnlock bool)
}

// Parker is the transport's side of a request whose reply comes later:
// for virtio-fs, the vhost-user back-end's (the descriptor chain stays out
// of the ring until Pending.Complete).
type Parker interface {
	// Park takes the request being served off its worker: it returns
	// where the reply goes later, or nil when no more requests may wait
	// (the request is then answered at once). c is asked to end the
	// wait when the transport needs the request back.
	Park(c Canceler) Pending
}

// Canceler ends a parked request soon, with an error reply. Cancel must
// not block and may be called more than once.
type Canceler interface {
	Cancel()
}

// Pending is a parked request's reply to come.
type Pending interface {
	// Complete writes the reply with fill (which returns the bytes
	// written into out, the request's reply segments) and sends it;
	// only the first call acts.
	Complete(fill func(out [][]byte) uint32) bool
}

// LockWait is a SETLKW waiting for its lock.
type LockWait struct {
	// In is the request, copied.
	In fuse.LkIn

	s        *Server
	pending  Pending
	done     atomic.Bool
	canceled atomic.Bool
	cancelSt atomic.Int32 // the Status a cancelled wait ends with
	reply    [outHeaderSize]byte
}

// Done ends the wait with st (OK: the lock is granted) and sends the
// reply. Only the first call acts.
func (lw *LockWait) Done(st Status) {
	if !lw.done.CompareAndSwap(false, true) {
		return
	}
	lw.s.dropWait(lw)
	oh := (*fuse.OutHeader)(unsafe.Pointer(&lw.reply[0]))
	oh.Length = uint32(outHeaderSize)
	oh.Status = -int32(st)
	oh.Unique = lw.In.Unique
	lw.pending.Complete(func(out [][]byte) uint32 { return uint32(scatter(out, lw.reply[:], 0)) })
}

// Cancel asks the FileSystem to end the wait with ENOLCK: the transport
// needs the request back (Canceler).
func (lw *LockWait) Cancel() { lw.cancel(syscall.ENOLCK) }

// CancelStatus is the Status a cancelled wait ends with: EINTR when the
// guest interrupted it, ENOLCK when the transport took it back.
func (lw *LockWait) CancelStatus() Status {
	if st := Status(lw.cancelSt.Load()); st != 0 {
		return st
	}
	return syscall.EINTR
}

// cancel asks the FileSystem to end the wait with st; the first reason
// given stays.
func (lw *LockWait) cancel(st Status) {
	lw.cancelSt.CompareAndSwap(0, int32(st))
	lw.canceled.Store(true)
	if lw.s.lfs != nil && !lw.done.Load() {
		lw.s.lfs.CancelLk(lw)
	}
}

// lockState is the server's parked SETLKWs, by unique, for INTERRUPT.
type lockState struct {
	lfs    LockFileSystem
	waitMu sync.Mutex
	waits  map[uint64]*LockWait
}

func (s *Server) addWait(lw *LockWait) {
	s.waitMu.Lock()
	if s.waits == nil {
		s.waits = map[uint64]*LockWait{}
	}
	if _, dup := s.waits[lw.In.Unique]; !dup {
		s.waits[lw.In.Unique] = lw
	}
	s.waitMu.Unlock()
}

func (s *Server) dropWait(lw *LockWait) {
	s.waitMu.Lock()
	if s.waits[lw.In.Unique] == lw {
		delete(s.waits, lw.In.Unique)
	}
	s.waitMu.Unlock()
}

// Waiting returns how many SETLKWs are parked.
func (s *Server) Waiting() int {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	return len(s.waits)
}

// ServeParking is Serve for a transport that can park requests: a SETLKW
// that has to wait is parked with p, and what ServeParking returns for it
// is meaningless (nothing is written to out until its Pending completes).
func (w *Worker) ServeParking(in, out [][]byte, p Parker) uint32 {
	w.parker = p
	n := w.Serve(in, out)
	w.parker = nil
	return n
}

func (w *Worker) getlk() (int, Status) {
	if w.s.lfs == nil {
		return 0, syscall.ENOSYS
	}
	out, size := bodyOf[fuse.LkOut](w)
	return size, w.s.lfs.GetLk(argsAs[fuse.LkIn](w), out)
}

func (w *Worker) setlk() (int, Status) {
	if w.s.lfs == nil {
		return 0, syscall.ENOSYS
	}
	return 0, w.s.lfs.SetLk(argsAs[fuse.LkIn](w))
}

func (w *Worker) setlkw() (int, Status) {
	lfs := w.s.lfs
	if lfs == nil {
		return 0, syscall.ENOSYS
	}
	in := argsAs[fuse.LkIn](w)
	st := lfs.SetLk(in)
	if st != syscall.EAGAIN {
		return 0, st
	}
	if w.parker == nil {
		// Nowhere to wait.
		return 0, syscall.ENOLCK
	}
	lw := &LockWait{In: *in, s: w.s}
	p := w.parker.Park(lw)
	if p == nil {
		return 0, syscall.ENOLCK
	}
	lw.pending = p
	w.parked = true
	w.s.addWait(lw)
	if wait, st := lfs.WaitLk(&lw.In, lw); !wait {
		lw.Done(st)
	} else if lw.canceled.Load() {
		// Cancelled while it was being parked.
		lfs.CancelLk(lw)
	}
	return 0, OK
}

// interrupt serves INTERRUPT: a parked SETLKW it names ends with EINTR.
// Any other request it names is let be (Linux's virtio-fs driver sends no
// INTERRUPT; the requests that can wait are the parked ones).
func (w *Worker) interrupt() (int, Status) {
	if len(w.args) < 8 || w.s.lfs == nil {
		return 0, OK
	}
	unique := *(*uint64)(unsafe.Pointer(&w.args[0]))
	w.s.waitMu.Lock()
	lw := w.s.waits[unique]
	w.s.waitMu.Unlock()
	if lw != nil {
		lw.cancel(syscall.EINTR)
	}
	return 0, OK
}
