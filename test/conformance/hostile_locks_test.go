package frontend_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The hostile cases of locks: GETLK, SETLK and SETLKW (POSIX record locks,
// and flock with FUSE_LK_FLOCK) naming a handle that is not the node's
// file handle, lock types and ranges no guest kernel sends, more SETLKWs
// waiting than the daemon parks, an INTERRUPT of a parked SETLKW, and the
// RELEASE of a handle whose SETLKWs are parked.
//
// Ours takes the guest's locks on the host (POSIX locks as OFD locks on a
// description per lock owner, flock on the handle's descriptor) and parks
// a SETLKW whose lock is held. The reference virtiofsd (1.14.0, as 1.13.2)
// serves no locks: it answers ENOSYS to every GETLK, SETLK and SETLKW
// (and offers neither POSIX_LOCKS nor FLOCK_LOCKS at INIT, so a Linux
// guest keeps its locks to itself), and returns an INTERRUPT's chain
// unanswered, as ours does; the cases want exactly that of it and log it
// (a difference would be logged as the reference's, as the suite does).
//
// The cases that park a SETLKW know it is parked once a GETATTR sent
// behind it on the same queue is answered: without a thread pool (the
// suite's daemons run without) a ring's worker serves its chains in
// order, and a SETLKW is parked before its worker takes the next chain.

func init() { moreHostileCases = append(moreHostileCases, hostileLockCases) }

const (
	hOpGetlk     = 31
	hOpSetlk     = 32
	hOpSetlkw    = 33
	hLkFlock     = 1 // FUSE_LK_FLOCK
	hOffsetMax   = math.MaxInt64
	hLockWaits   = 1024 // the daemon's bound on parked SETLKWs
	hLockTimeout = 30 * time.Second
)

func hLkIn(fh, owner, start, end uint64, typ, flags uint32) []byte {
	return argsOf(&fuse.LkIn{Fh: fh, Owner: owner, Lk: fuse.FileLock{Start: start, End: end, Typ: typ}, LkFlags: flags})
}

func hFlushOwnerIn(fh, owner uint64) []byte { return argsOf(&fuse.FlushIn{Fh: fh, LockOwner: owner}) }

func hLkName(op uint32) string {
	switch op {
	case hOpGetlk:
		return "GETLK"
	case hOpSetlk:
		return "SETLK"
	case hOpSetlkw:
		return "SETLKW"
	}
	return fmt.Sprintf("opcode %d", op)
}

func hLkTypeName(typ uint32) string {
	switch typ {
	case syscall.F_RDLCK:
		return "F_RDLCK"
	case syscall.F_WRLCK:
		return "F_WRLCK"
	case syscall.F_UNLCK:
		return "F_UNLCK"
	}
	return fmt.Sprintf("type %#x", typ)
}

// hLk sends a lock request on request queue 1 and wants want (0: OK) from
// ours, ENOSYS from the reference; it returns the reply's body.
func (h *hctx) hLk(what string, req []byte, want syscall.Errno) ([]byte, error) {
	r, err := h.call(1, req, 4096)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if h.ref {
		want = syscall.ENOSYS
	}
	h.logf("%s: %s", what, hErrnoName(r.status))
	if r.used == 0 || r.status != -int32(want) {
		return nil, fmt.Errorf("%s: used %d status %s, want %s", what, r.used, hErrnoName(r.status), hErrnoName(-int32(want)))
	}
	return r.body, nil
}

// hLkAll sends each lock request and wants want of every one.
func (h *hctx) hLkAll(reqs []hMismatch, want syscall.Errno) error {
	for _, r := range reqs {
		if _, err := h.hLk(r.what, r.req, want); err != nil {
			return err
		}
	}
	return nil
}

// hLkOps returns the lock requests of node with handle fh and owner: GETLK,
// SETLK and SETLKW of a write lock, SETLK of an unlock, and SETLK and
// SETLKW of an exclusive flock.
func (h *hctx) hLkOps(what string, node, fh, owner uint64) []hMismatch {
	w := hLkIn(fh, owner, 0, hOffsetMax, syscall.F_WRLCK, 0)
	return []hMismatch{
		{"GETLK of " + what, h.req(hOpGetlk, node, w, 0)},
		{"SETLK F_WRLCK of " + what, h.req(hOpSetlk, node, w, 0)},
		{"SETLKW F_WRLCK of " + what, h.req(hOpSetlkw, node, w, 0)},
		{"SETLK F_UNLCK of " + what, h.req(hOpSetlk, node, hLkIn(fh, owner, 0, hOffsetMax, syscall.F_UNLCK, 0), 0)},
		{"flock SETLK LOCK_EX of " + what, h.req(hOpSetlk, node, hLkIn(fh, owner, 0, hOffsetMax, syscall.F_WRLCK, hLkFlock), 0)},
		{"flock SETLKW LOCK_EX of " + what, h.req(hOpSetlkw, node, hLkIn(fh, owner, 0, hOffsetMax, syscall.F_WRLCK, hLkFlock), 0)},
	}
}

// hHostLocks reports what a host process finds of the guest's locks on
// the share's file name: F_OFD_GETLK of a write lock on [start, end]
// (hOffsetMax: to the end), and whether a non-blocking exclusive flock
// is refused.
func (h *hctx) hHostLocks(name string, start, end int64) (string, bool, error) {
	fd, err := unix.Open(filepath.Join(h.share, name), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", false, err
	}
	defer unix.Close(fd)
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: unix.SEEK_SET, Start: start}
	if end != hOffsetMax {
		fl.Len = end - start + 1
	}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
		return "", false, err
	}
	flocked := false
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return "", false, err
		}
		flocked = true
	} else {
		unix.Flock(fd, unix.LOCK_UN)
	}
	return hLkTypeName(uint32(fl.Type)), flocked, nil
}

// hHostSees wants the host to find lock typ (F_UNLCK: none) on name's
// [start, end] and a flock or none. The reference keeps no lock on the
// host at all.
func (h *hctx) hHostSees(name string, start, end int64, typ uint32, flocked bool) error {
	got, fl, err := h.hHostLocks(name, start, end)
	if err != nil {
		return fmt.Errorf("host view of %s: %w", name, err)
	}
	if h.ref {
		typ, flocked = syscall.F_UNLCK, false
	}
	if got != hLkTypeName(typ) || fl != flocked {
		return fmt.Errorf("the host finds %s on %s [%d,%d] and flock held %v, want %s and %v", got, name, start, end, fl, hLkTypeName(typ), flocked)
	}
	return nil
}

// hAsync is a request sent without waiting for its reply (a SETLKW that
// parks), with its own guest buffers.
type hAsync struct {
	r       *frontend.Request
	buf     uint64 // hAsyncSize bytes: the request, then the reply
	b       []byte
	unique  uint64
	waiting bool
}

const (
	hAsyncSize  = 256
	hAsyncReply = 128 // the reply's offset in buf
)

func (h *hctx) hNewAsync() (*hAsync, error) {
	gpa, err := h.fe.Mem.AllocIn(0, hAsyncSize)
	if err != nil {
		return nil, err
	}
	a := &hAsync{r: h.fe.NewRequest(), buf: gpa, b: h.guest(gpa, hAsyncSize)}
	h.cleanup = append(h.cleanup, a.r.Release)
	return a, nil
}

// send makes req (at most hAsyncReply bytes) available on request queue 1.
func (h *hctx) hSend(a *hAsync, req []byte) error {
	if a.waiting {
		return errors.New("async request sent while it waits")
	}
	copy(a.b, req)
	clear(a.b[hAsyncReply:])
	a.unique = binary.LittleEndian.Uint64(req[8:])
	a.r.Bufs = append(a.r.Bufs[:0], frontendBuf(a.buf, len(req)), frontendBuf(a.buf+hAsyncReply, hAsyncSize-hAsyncReply))
	a.r.Readable = 1
	if err := h.q.Submit(a.r); err != nil {
		return err
	}
	a.waiting = true
	return nil
}

// hAnswered reports whether the device has written a's reply (its
// header's unique), without waiting.
func (a *hAsync) hAnswered() bool {
	return binary.LittleEndian.Uint64(a.b[hAsyncReply+8:]) == a.unique
}

// hWait waits up to d for a's reply and returns its status.
func (h *hctx) hWait(a *hAsync, d time.Duration) (int32, error) {
	if err := h.q.WaitTimeout(a.r, d); err != nil {
		return 0, err
	}
	a.waiting = false
	if a.r.UsedLen < 16 {
		return 0, fmt.Errorf("reply of %d bytes", a.r.UsedLen)
	}
	out := a.b[hAsyncReply:]
	if u := binary.LittleEndian.Uint64(out[8:]); u != a.unique {
		return 0, fmt.Errorf("reply unique %d, request unique %d", u, a.unique)
	}
	return int32(binary.LittleEndian.Uint32(out[4:])), nil
}

// hServed sends a GETATTR of the root on request queue 1 and wants it
// answered: the chains before it on the queue have been served (parked,
// for a SETLKW that waits).
func (h *hctx) hServed() error {
	if err := h.hOK(h.req(fuseclient.OpGetattr, fuseclient.RootID, argsOf(&fuse.GetAttrIn{}), 0)); err != nil {
		return fmt.Errorf("GETATTR behind the SETLKWs: %w", err)
	}
	return nil
}

// hNoReply sends req (an INTERRUPT) on request queue 1 and wants its
// chain back with nothing written.
func (h *hctx) hNoReply(what string, req []byte) error {
	r, err := h.call(1, req, 4096)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	h.logf("%s: used %d", what, r.used)
	if r.used != 0 {
		return fmt.Errorf("%s: used %d (status %s), want no reply", what, r.used, hErrnoName(r.status))
	}
	return nil
}

// hOK sends req on request queue 1 and wants it answered OK, without a
// note for the summary.
func (h *hctx) hOK(req []byte) error {
	r, err := h.call(1, req, 4096)
	if err != nil {
		return err
	}
	if r.used == 0 || r.status != 0 {
		return fmt.Errorf("used %d status %s, want OK", r.used, hErrnoName(r.status))
	}
	return nil
}

// hWantStatus waits for a and wants want from ours, ENOSYS from the
// reference.
func (h *hctx) hWantStatus(what string, a *hAsync, want syscall.Errno) error {
	st, err := h.hWait(a, hLockTimeout)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if h.ref {
		want = syscall.ENOSYS
	}
	h.logf("%s: %s", what, hErrnoName(st))
	if st != -int32(want) {
		return fmt.Errorf("%s: %s, want %s", what, hErrnoName(st), hErrnoName(-int32(want)))
	}
	return nil
}

// hHold has owner hold a write lock on the whole of probe through the
// fixture's handle, and with flock an exclusive flock of that handle too.
func (h *hctx) hHold(owner uint64, flock bool) error {
	if _, err := h.hLk("SETLK F_WRLCK of probe by the holder", h.req(hOpSetlk, h.probe, hLkIn(h.probeFh, owner, 0, hOffsetMax, syscall.F_WRLCK, 0), 0), 0); err != nil {
		return err
	}
	if flock {
		if _, err := h.hLk("flock SETLK LOCK_EX of probe by the holder", h.req(hOpSetlk, h.probe, hLkIn(h.probeFh, owner, 0, hOffsetMax, syscall.F_WRLCK, hLkFlock), 0), 0); err != nil {
			return err
		}
	}
	return nil
}

const (
	hHolder   = 0x1000 // the lock owner holding probe's lock
	hWaiter   = 0x2000 // a lock owner waiting for it
	hStranger = 0x3000
)

func hostileLockCases() []hcase {
	return []hcase{
		{cat: "fuse", name: "GETLK, SETLK and SETLKW naming one file with another's handle", want: "errno reply EBADF for each, POSIX and flock, new owner or one holding a lock on the node; nothing is locked or unlocked (the reference: ENOSYS)",
			setup: func(h *hctx) error {
				if err := hOpenOther(h); err != nil {
					return err
				}
				init := h.c.InitOut()
				h.t.Logf("INIT offers POSIX_LOCKS %v, FLOCK_LOCKS %v", init.Flags64()&fuse.CAP_POSIX_LOCKS != 0, init.Flags64()&fuse.CAP_FLOCK_LOCKS != 0)
				// The holder has a description of probe (a read lock on
				// [0,9]).
				_, err := h.hLk("SETLK F_RDLCK [0,9] of probe by the holder", h.req(hOpSetlk, h.probe, hLkIn(h.probeFh, hHolder, 0, 9, syscall.F_RDLCK, 0), 0), 0)
				return err
			},
			run: func(h *hctx) error {
				other, otherFh := h.vals["other"], h.vals["otherFh"]
				var reqs []hMismatch
				reqs = append(reqs, h.hLkOps("probe with other's handle, a new owner", h.probe, otherFh, hStranger)...)
				reqs = append(reqs, h.hLkOps("probe with other's handle, the owner holding a lock on probe", h.probe, otherFh, hHolder)...)
				reqs = append(reqs, h.hLkOps("other with probe's handle, a new owner", other, h.probeFh, hStranger)...)
				reqs = append(reqs, h.hLkOps("other with probe's handle, the owner holding a lock on probe", other, h.probeFh, hHolder)...)
				if err := h.hLkAll(reqs, syscall.EBADF); err != nil {
					return err
				}
				if !h.first {
					return nil
				}
				if err := h.hHostSees("probe", 0, 9, syscall.F_RDLCK, false); err != nil {
					return err
				}
				if err := h.hHostSees("probe", 10, hOffsetMax, syscall.F_UNLCK, false); err != nil {
					return err
				}
				return h.hHostSees("other", 0, hOffsetMax, syscall.F_UNLCK, false)
			}},
		{cat: "fuse", name: "GETLK, SETLK and SETLKW with a directory's handle", want: "errno reply EBADF for each, on the directory and on a file, POSIX and flock (the reference: ENOSYS)",
			run: func(h *hctx) error {
				var reqs []hMismatch
				reqs = append(reqs, h.hLkOps("dir with its handle", h.dir, h.dirFh, hStranger)...)
				reqs = append(reqs, h.hLkOps("probe with dir's handle", h.probe, h.dirFh, hStranger)...)
				reqs = append(reqs, h.hLkOps("dir with probe's handle", h.dir, h.probeFh, hStranger)...)
				if err := h.hLkAll(reqs, syscall.EBADF); err != nil {
					return err
				}
				if !h.first {
					return nil
				}
				return h.hHostSees("probe", 0, hOffsetMax, syscall.F_UNLCK, false)
			}},
		{cat: "fuse", name: "GETLK, SETLK and SETLKW with an unknown or a released handle", want: "errno reply EBADF for each, POSIX and flock (the reference: ENOSYS)",
			setup: func(h *hctx) error {
				o, err := h.c.Open(h.probe, syscall.O_RDWR)
				if err != nil {
					return err
				}
				h.vals["released"] = o.Fh
				return h.c.Release(h.probe, o.Fh, syscall.O_RDWR)
			},
			run: func(h *hctx) error {
				var reqs []hMismatch
				reqs = append(reqs, h.hLkOps("probe with an unknown handle", h.probe, 1<<40, hStranger)...)
				reqs = append(reqs, h.hLkOps("probe with a released handle", h.probe, h.vals["released"], hStranger)...)
				if err := h.hLkAll(reqs, syscall.EBADF); err != nil {
					return err
				}
				if !h.first {
					return nil
				}
				return h.hHostSees("probe", 0, hOffsetMax, syscall.F_UNLCK, false)
			}},
		{cat: "fuse", name: "GETLK, SETLK and SETLKW with lock types no kernel sends", want: "errno reply EINVAL for types 3, 0x80000000, 0x10001 and 0xffffffff, POSIX and flock, and for GETLK of F_UNLCK; nothing is locked (the reference: ENOSYS)",
			run: func(h *hctx) error {
				var reqs []hMismatch
				// 0x80000000 and 0x10001 are F_RDLCK and F_WRLCK cut to
				// the host's 16 bits.
				for _, typ := range []uint32{3, 0x80000000, 0x10001, 0xffffffff} {
					for _, flags := range []uint32{0, hLkFlock} {
						in := hLkIn(h.probeFh, hStranger, 0, hOffsetMax, typ, flags)
						kind := "POSIX"
						if flags != 0 {
							kind = "flock"
						}
						for _, op := range []uint32{hOpGetlk, hOpSetlk, hOpSetlkw} {
							if op == hOpGetlk && flags != 0 {
								continue // GETLK has no flock
							}
							reqs = append(reqs, hMismatch{fmt.Sprintf("%s %s of type %#x", kind, hLkName(op), typ), h.req(op, h.probe, in, 0)})
						}
					}
				}
				reqs = append(reqs, hMismatch{"GETLK of F_UNLCK", h.req(hOpGetlk, h.probe, hLkIn(h.probeFh, hStranger, 0, hOffsetMax, syscall.F_UNLCK, 0), 0)})
				if err := h.hLkAll(reqs, syscall.EINVAL); err != nil {
					return err
				}
				if !h.first {
					return nil
				}
				return h.hHostSees("probe", 0, hOffsetMax, syscall.F_UNLCK, false)
			}},
		{cat: "fuse", name: "GETLK, SETLK and SETLKW of a range that ends before it starts or starts past 2^63 - 1", want: "errno reply EINVAL for each; a range from 0 to 2^64 - 1 (to the end of the file) and one ending at 2^63 - 1 are taken and let go (the reference: ENOSYS)",
			run: func(h *hctx) error {
				var reqs []hMismatch
				for _, r := range []struct {
					what       string
					start, end uint64
				}{
					{"[100,99]", 100, 99},
					{"[2^63,2^64-1]", 1 << 63, math.MaxUint64},
					{"[2^63,2^63]", 1 << 63, 1 << 63},
					{"[2^64-1,2^64-1]", math.MaxUint64, math.MaxUint64},
				} {
					for _, op := range []uint32{hOpGetlk, hOpSetlk, hOpSetlkw} {
						reqs = append(reqs, hMismatch{fmt.Sprintf("%s F_WRLCK of %s", hLkName(op), r.what), h.req(op, h.probe, hLkIn(h.probeFh, hStranger, r.start, r.end, syscall.F_WRLCK, 0), 0)})
					}
				}
				if err := h.hLkAll(reqs, syscall.EINVAL); err != nil {
					return err
				}
				if h.first {
					if err := h.hHostSees("probe", 0, hOffsetMax, syscall.F_UNLCK, false); err != nil {
						return err
					}
				}
				for _, end := range []uint64{math.MaxUint64, hOffsetMax} {
					what := fmt.Sprintf("[0,%#x]", end)
					if _, err := h.hLk("SETLK F_WRLCK of "+what, h.req(hOpSetlk, h.probe, hLkIn(h.probeFh, hStranger, 0, end, syscall.F_WRLCK, 0), 0), 0); err != nil {
						return err
					}
					if h.first {
						if err := h.hHostSees("probe", 1<<40, hOffsetMax, syscall.F_WRLCK, false); err != nil {
							return fmt.Errorf("after SETLK of %s: %w", what, err)
						}
					}
					if _, err := h.hLk("SETLK F_UNLCK of "+what, h.req(hOpSetlk, h.probe, hLkIn(h.probeFh, hStranger, 0, end, syscall.F_UNLCK, 0), 0), 0); err != nil {
						return err
					}
				}
				// The stranger's description goes with its FLUSH.
				return h.hOK(h.req(fuseclient.OpFlush, h.probe, hFlushOwnerIn(h.probeFh, hStranger), 0))
			}},
		hSetlkwFlood(),
		hInterruptSetlkw(),
		hReleaseWaiters(),
	}
}

func frontendBuf(gpa uint64, n int) virtqueue.Buffer {
	return virtqueue.Buffer{Addr: gpa, Len: uint32(n)}
}

// hSetlkwFlood parks SETLKWs past the daemon's bound: a holder keeps a
// write lock on probe, and hLockWaits + 76 lock owners ask for a read
// lock with SETLKW. The first run floods: the daemon parks hLockWaits of
// them and answers the others ENOLCK, serves GETATTR and LOOKUP while they
// wait, grants every parked one once the holder unlocks, and closes the
// descriptions at the owners' FLUSH (the serving process ends with the
// descriptors it had). The repetitions, for the leak check, park one
// SETLKW and let the holder go.
func hSetlkwFlood() hcase {
	const flood = hLockWaits + 76
	var asyncs []*hAsync
	return hcase{cat: "fuse", name: "SETLKW flood past the daemon's bound of parked waits", want: fmt.Sprintf("%d parked, %d ENOLCK; GETATTR and LOOKUP served meanwhile; every parked one granted at the holder's unlock; no descriptor left after the owners' FLUSH (the reference: ENOSYS for all)", hLockWaits, flood-hLockWaits),
		opts: frontend.Options{QueueSize: 4096},
		setup: func(h *hctx) error {
			asyncs = nil
			return h.hHold(hHolder, false)
		},
		run: func(h *hctx) error {
			n := 1
			if h.first {
				n = flood
			}
			for len(asyncs) < n {
				a, err := h.hNewAsync()
				if err != nil {
					return err
				}
				asyncs = append(asyncs, a)
			}
			return h.hFlood(asyncs[:n])
		}}
}

// hFlood sends a SETLKW on each of as, and sees them through (see
// hSetlkwFlood).
func (h *hctx) hFlood(as []*hAsync) error {
	n := len(as)
	pid := hServingPid(h.fe.Proc().Pid())
	var before hUsage
	if h.first {
		// (The suite's leak check measures the repetitions.)
		var err error
		if before, err = hMeasure(pid); err != nil {
			return err
		}
	}
	for i, a := range as {
		if err := h.hSend(a, h.req(hOpSetlkw, h.probe, hLkIn(h.probeFh, hWaiter+uint64(i), 0, hOffsetMax, syscall.F_RDLCK, 0), 0)); err != nil {
			return fmt.Errorf("sending SETLKW %d: %w", i, err)
		}
	}
	if err := h.hServed(); err != nil {
		return err
	}
	parked := min(n, hLockWaits)
	if h.ref {
		parked = 0
	}
	// Every SETLKW has been served: those not parked are answered.
	answered := map[int]bool{}
	for i, a := range as {
		if !a.hAnswered() {
			continue
		}
		st, err := h.hWait(a, hLockTimeout)
		if err != nil {
			return fmt.Errorf("SETLKW %d: %w", i, err)
		}
		want := syscall.ENOLCK
		if h.ref {
			want = syscall.ENOSYS
		}
		if st != -int32(want) {
			return fmt.Errorf("SETLKW %d answered %s while the lock is held, want %s", i, hErrnoName(st), hErrnoName(-int32(want)))
		}
		answered[i] = true
	}
	h.logf("%d SETLKWs sent, %d answered at once (%s), %d parked", n, len(answered), map[bool]string{false: "ENOLCK", true: "ENOSYS"}[h.ref], n-len(answered))
	if n-len(answered) != parked {
		return fmt.Errorf("%d of %d SETLKWs parked, want %d", n-len(answered), n, parked)
	}
	if h.first && !h.ref && n > hLockWaits {
		// The daemon keeps serving meanwhile.
		for i := 0; i < 10; i++ {
			if _, err := h.c.GetAttr(h.probe); err != nil {
				return fmt.Errorf("GETATTR while %d SETLKWs wait: %w", parked, err)
			}
			e, err := h.c.Lookup(fuseclient.RootID, "dir")
			if err != nil {
				return fmt.Errorf("LOOKUP while %d SETLKWs wait: %w", parked, err)
			}
			if err := h.c.Forget(e.NodeId, 1); err != nil {
				return err
			}
		}
		if err := h.hHostSees("probe", 0, hOffsetMax, syscall.F_WRLCK, false); err != nil {
			return err
		}
		h.logf("GETATTR and LOOKUP served while %d SETLKWs wait; the daemon said: %s", parked, hLogLine(h.fe.Proc().Stderr(), "could not be deferred", "SETLKWs waiting"))
	}
	// The holder lets go: every parked SETLKW is granted.
	if _, err := h.hLk("SETLK F_UNLCK of probe by the holder", h.req(hOpSetlk, h.probe, hLkIn(h.probeFh, hHolder, 0, hOffsetMax, syscall.F_UNLCK, 0), 0), 0); err != nil {
		return err
	}
	for i, a := range as {
		if answered[i] {
			continue
		}
		st, err := h.hWait(a, hLockTimeout)
		if err != nil {
			return fmt.Errorf("parked SETLKW %d after the holder's unlock: %w", i, err)
		}
		if st != 0 {
			return fmt.Errorf("parked SETLKW %d answered %s after the holder's unlock, want OK", i, hErrnoName(st))
		}
	}
	var during hUsage
	if h.first {
		if err := h.hHostSees("probe", 0, hOffsetMax, syscall.F_RDLCK, false); err != nil {
			return err
		}
		var err error
		if during, err = hMeasure(pid); err != nil {
			return err
		}
	}
	// Every owner closes its file: its description goes.
	for i := range as {
		if err := h.hOK(h.req(fuseclient.OpFlush, h.probe, hFlushOwnerIn(h.probeFh, hWaiter+uint64(i)), 0)); err != nil {
			return fmt.Errorf("FLUSH of owner %d: %w", i, err)
		}
	}
	if err := h.hHold(hHolder, false); err != nil {
		return err
	}
	if !h.first {
		return nil
	}
	after, err := hMeasure(pid)
	if err != nil {
		return err
	}
	if after.fds != before.fds {
		return fmt.Errorf("the serving process had %d descriptors before the SETLKWs and %d after their owners' FLUSH", before.fds, after.fds)
	}
	h.logf("descriptors of the serving process: %d before, %d with the waiters' locks granted, %d after their FLUSH", before.fds, during.fds, after.fds)
	return nil
}

// hLogLine returns the first line of out that holds one of ss.
func hLogLine(out string, ss ...string) string {
	for _, l := range strings.Split(out, "\n") {
		for _, s := range ss {
			if strings.Contains(l, s) {
				return strings.TrimSpace(l)
			}
		}
	}
	return "(nothing)"
}

// hInterruptSetlkw parks a SETLKW behind a holder's lock and interrupts
// it: the SETLKW ends with EINTR, the holder keeps its lock, and an
// INTERRUPT naming no request in flight changes nothing.
func hInterruptSetlkw() hcase {
	var a *hAsync
	return hcase{cat: "fuse", name: "INTERRUPT of a parked SETLKW", want: "the SETLKW ends with EINTR, the INTERRUPT has no reply; the holder keeps its lock; an INTERRUPT of an unknown unique changes nothing (the reference: ENOSYS for the SETLKW)",
		setup: func(h *hctx) error {
			var err error
			if a, err = h.hNewAsync(); err != nil {
				return err
			}
			// The waiter's own handle (a flock of the holder's handle
			// would convert the holder's flock).
			o, err := h.c.Open(h.probe, syscall.O_RDWR)
			if err != nil {
				return err
			}
			h.vals["waiterFh"] = o.Fh
			return h.hHold(hHolder, true)
		},
		run: func(h *hctx) error {
			for _, flags := range []uint32{0, hLkFlock} {
				what := "POSIX SETLKW"
				if flags != 0 {
					what = "flock SETLKW"
				}
				if err := h.hSend(a, h.req(hOpSetlkw, h.probe, hLkIn(h.vals["waiterFh"], hWaiter, 0, hOffsetMax, syscall.F_WRLCK, flags), 0)); err != nil {
					return err
				}
				if err := h.hServed(); err != nil {
					return err
				}
				if err := h.hNoReply("INTERRUPT of the parked "+what, h.req(fuseclient.OpInterrupt, 0, hle(a.unique), 0)); err != nil {
					return err
				}
				if err := h.hWantStatus("the interrupted "+what, a, syscall.EINTR); err != nil {
					return err
				}
			}
			if err := h.hNoReply("INTERRUPT of an unknown unique", h.req(fuseclient.OpInterrupt, 0, hle(h.unique+1000), 0)); err != nil {
				return err
			}
			if h.first {
				if err := h.hHostSees("probe", 0, hOffsetMax, syscall.F_WRLCK, true); err != nil {
					return err
				}
			}
			return h.hOK(h.req(fuseclient.OpFlush, h.probe, hFlushOwnerIn(h.vals["waiterFh"], hWaiter), 0))
		}}
}

// hReleaseWaiters parks a POSIX SETLKW and a flock SETLKW on a second
// handle of probe behind the holder's locks, and releases that handle
// as Linux does when its last descriptor goes (FUSE_RELEASE_FLOCK_UNLOCK
// with the lock owner): both end with EINTR, the holder keeps its locks,
// and the serving process ends with the descriptors it had before the
// handle was opened.
func hReleaseWaiters() hcase {
	var posix, flock *hAsync
	return hcase{cat: "fuse", name: "RELEASE of a handle with parked SETLKWs", want: "the parked POSIX and flock SETLKWs end with EINTR; the holder keeps its locks; no descriptor is left (the reference: ENOSYS for the SETLKWs)",
		setup: func(h *hctx) error {
			var err error
			if posix, err = h.hNewAsync(); err != nil {
				return err
			}
			if flock, err = h.hNewAsync(); err != nil {
				return err
			}
			return h.hHold(hHolder, true)
		},
		run: func(h *hctx) error {
			pid := hServingPid(h.fe.Proc().Pid())
			before, err := hMeasure(pid)
			if err != nil {
				return err
			}
			o, err := h.c.Open(h.probe, syscall.O_RDWR)
			if err != nil {
				return err
			}
			if err := h.hSend(posix, h.req(hOpSetlkw, h.probe, hLkIn(o.Fh, hWaiter, 0, hOffsetMax, syscall.F_WRLCK, 0), 0)); err != nil {
				return err
			}
			if err := h.hSend(flock, h.req(hOpSetlkw, h.probe, hLkIn(o.Fh, hWaiter, 0, hOffsetMax, syscall.F_WRLCK, hLkFlock), 0)); err != nil {
				return err
			}
			if err := h.hServed(); err != nil {
				return err
			}
			rel := argsOf(&fuse.ReleaseIn{Fh: o.Fh, Flags: syscall.O_RDWR, ReleaseFlags: fuse.FUSE_RELEASE_FLOCK_UNLOCK, LockOwner: hWaiter})
			if _, err := h.expectOK(h.req(fuseclient.OpRelease, h.probe, rel, 0), 4096); err != nil {
				return fmt.Errorf("RELEASE of the waiters' handle: %w", err)
			}
			if err := h.hWantStatus("the POSIX SETLKW of the released handle", posix, syscall.EINTR); err != nil {
				return err
			}
			if err := h.hWantStatus("the flock SETLKW of the released handle", flock, syscall.EINTR); err != nil {
				return err
			}
			if h.first {
				if err := h.hHostSees("probe", 0, hOffsetMax, syscall.F_WRLCK, true); err != nil {
					return err
				}
			}
			after, err := hMeasure(pid)
			if err != nil {
				return err
			}
			if after.fds != before.fds {
				return fmt.Errorf("the serving process had %d descriptors before the handle was opened and %d after its RELEASE", before.fds, after.fds)
			}
			h.logf("descriptors of the serving process: %d before the handle, %d after its RELEASE", before.fds, after.fds)
			return nil
		}}
}
