package passthrough

import (
	"fmt"
	"math"
	"sync"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Locks that hold across the host boundary (fuse.LockFileSystem).
//
// POSIX record locks (and the guest's OFD locks, which Linux sends the same
// way with the open file as owner) become open-file-description locks on
// the host (F_OFD_SETLK, F_OFD_GETLK): the daemon keeps one host open file
// description per (node, guest lock owner), reopened from the inode through
// the gate with the access mode of the handle the owner's first lock came
// through, and takes that owner's locks on it. So two guest owners
// conflict as two processes do, and with host processes and other
// daemons' guests; ranges, read and write types, upgrades, downgrades and
// splits are the host kernel's. An owner's description is closed, which
// drops its locks, when the guest closes a descriptor of the file (FLUSH
// with the owner: POSIX locks go with any close by their owner), at
// DESTROY and when the device is reset.
//
// flock goes on the FUSE handle's own host descriptor: one host open file
// description per guest open file, as flock wants; it is dropped at
// RELEASE (and with the descriptor's close).
//
// A lock request's handle must be an open file of its node (fs.file), as
// for every request that names one: another node's handle, a directory's
// or one never opened is EBADF, for an unlock too, and whatever the lock
// owner already holds on the node.
//
// Differences from local locks, by construction: GETLK reports l_pid -1
// (what Linux reports for OFD locks; a Linux guest, finding no such pid
// among its own, shows 0), even when the holder is another process of the
// same guest; a blocked SETLKW gets no deadlock detection (EDEADLK), which
// OFD locks lack; a write lock through an owner whose description was
// opened read-only (its first lock came through an O_RDONLY handle) fails
// with EBADF.
//
// Waiting. Linux has no lock-granted notification, and a blocked
// F_OFD_SETLKW cannot be cancelled from Go, so a SETLKW whose lock is held
// is parked (fuse.LockWait) and retried with the non-blocking call: at once
// when the daemon itself lets go of a lock on that node (an unlock, a
// FLUSH, a RELEASE), and on a timer to see unlocks on the host, backing off
// from minLockRetry to maxLockRetry. One goroutine retries every waiter,
// and it runs only while some wait.

const (
	minLockRetry = time.Millisecond
	maxLockRetry = 50 * time.Millisecond
	// DefaultMaxLockOwners bounds the host descriptions held for guest
	// lock owners (each a descriptor), and DefaultMaxLockWaits the
	// SETLKWs waiting at once: past them SETLK is ENOLCK.
	DefaultMaxLockOwners = 1 << 14
	DefaultMaxLockWaits  = 1024
)

// lockKey is a guest lock owner on a node.
type lockKey struct{ node, owner uint64 }

// lockOwner is the host open file description of one guest lock owner.
type lockOwner struct {
	fd  int
	ino *inode // a use reference, while the description lives
}

// lockWaiter is one parked SETLKW.
type lockWaiter struct {
	w     *fuse.LockWait
	key   lockKey
	fh    uint64
	flock int          // flock's operation (LOCK_SH or LOCK_EX), or 0 for a POSIX lock
	f     *openFile    // flock: the handle, with a use reference
	fl    unix.Flock_t // POSIX: the lock
	next  time.Time
	wait  time.Duration
}

// lockTable is an FS's locks.
type lockTable struct {
	fs           *FS
	posix, flock bool // served (else kept in the guest, as virtiofsd does)
	maxOwners    int
	maxWaits     int

	mu      sync.Mutex
	owners  map[lockKey]*lockOwner
	flocked map[uint64]bool // handles holding a flock
	waits   map[*fuse.LockWait]*lockWaiter
	polling bool          // the retry goroutine runs
	wake    chan struct{} // tells it a lock was let go
	note    boundNote
}

func newLockTable(fs *FS, posix, flock bool) *lockTable {
	return &lockTable{fs: fs, posix: posix, flock: flock, maxOwners: DefaultMaxLockOwners, maxWaits: DefaultMaxLockWaits,
		owners: map[lockKey]*lockOwner{}, flocked: map[uint64]bool{}, waits: map[*fuse.LockWait]*lockWaiter{}, wake: make(chan struct{}, 1)}
}

// LockCaps implements fuse.LockFileSystem: POSIX_LOCKS and FLOCK_LOCKS
// unless the configuration keeps them in the guest.
func (fs *FS) LockCaps() uint64 {
	var c uint64
	if fs.locks.posix {
		c |= gofuse.CAP_POSIX_LOCKS
	}
	if fs.locks.flock {
		c |= gofuse.CAP_FLOCK_LOCKS
	}
	return c
}

// hostLock converts a guest lock (Linux's end is inclusive, OFFSET_MAX
// for the end of file) to the host's.
func hostLock(lk *gofuse.FileLock) (unix.Flock_t, syscall.Errno) {
	switch lk.Typ {
	case unix.F_RDLCK, unix.F_WRLCK, unix.F_UNLCK:
	default:
		return unix.Flock_t{}, syscall.EINVAL
	}
	if lk.Start > math.MaxInt64 || lk.End < lk.Start {
		return unix.Flock_t{}, syscall.EINVAL
	}
	fl := unix.Flock_t{Type: int16(lk.Typ), Whence: unix.SEEK_SET, Start: int64(lk.Start)}
	if lk.End < math.MaxInt64 {
		fl.Len = int64(lk.End-lk.Start) + 1
	}
	return fl, 0
}

// guestLock converts a host lock back (see hostLock); l_pid is -1, as
// Linux reports for OFD locks.
func guestLock(fl *unix.Flock_t, lk *gofuse.FileLock) {
	*lk = gofuse.FileLock{Typ: uint32(fl.Type)}
	if fl.Type == unix.F_UNLCK {
		return
	}
	lk.Start, lk.End, lk.Pid = uint64(fl.Start), math.MaxInt64, math.MaxUint32
	if fl.Len > 0 {
		lk.End = uint64(fl.Start + fl.Len - 1)
	}
}

// conflict maps a refused non-blocking lock to EAGAIN.
func conflict(err error) syscall.Errno {
	e := errnoOf(err)
	if e == syscall.EACCES || e == syscall.EWOULDBLOCK {
		return syscall.EAGAIN
	}
	return e
}

// owner returns the description of key's owner, opening it (on f, the
// request's open file of key's node, with its access mode) when create is
// set. t.mu is held.
func (t *lockTable) owner(key lockKey, f *openFile, create bool) (*lockOwner, syscall.Errno) {
	if o := t.owners[key]; o != nil || !create {
		return o, 0
	}
	if len(t.owners) >= t.maxOwners {
		t.note.note(t.fs.cfg.Logf, fmt.Sprintf("the guest's lock owners hold %d host open files for their locks, the most allowed: new lock owners get ENOLCK until some close their files", len(t.owners)))
		return nil, syscall.ENOLCK
	}
	fd, e := t.fs.openInode(f.ino, regular, int(f.flags)&unix.O_ACCMODE|unix.O_CLOEXEC)
	if e != 0 {
		return nil, e
	}
	f.ino.refs.Add(1)
	o := &lockOwner{fd: fd, ino: f.ino}
	t.owners[key] = o
	return o, 0
}

// dropOwner closes o's description, which drops its locks; t.mu is held.
func (t *lockTable) dropOwner(key lockKey, o *lockOwner) {
	delete(t.owners, key)
	unix.Close(o.fd)
	o.ino.put()
}

// GetLk implements fuse.LockFileSystem.
func (fs *FS) GetLk(in *gofuse.LkIn, out *gofuse.LkOut) syscall.Errno {
	t := fs.locks
	if !t.posix || in.LkFlags&gofuse.FUSE_LK_FLOCK != 0 {
		return syscall.ENOSYS
	}
	fl, e := hostLock(&in.Lk)
	if e != 0 {
		return e
	}
	if fl.Type == unix.F_UNLCK {
		return syscall.EINVAL
	}
	// The handle must be the node's open file, whatever the owner holds.
	f, e := fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return e
	}
	defer f.put()
	t.mu.Lock()
	defer t.mu.Unlock()
	fd := -1
	if o, _ := t.owner(lockKey{in.NodeId, in.Owner}, f, false); o != nil {
		fd = o.fd
	} else {
		// An owner holding nothing: test from a description of its own.
		if fd, e = fs.openInode(f.ino, regular, unix.O_RDONLY|unix.O_CLOEXEC); e != 0 {
			return e
		}
		defer unix.Close(fd)
	}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
		return errnoOf(err)
	}
	guestLock(&fl, &out.Lk)
	return 0
}

// SetLk implements fuse.LockFileSystem.
func (fs *FS) SetLk(in *gofuse.LkIn) syscall.Errno {
	t := fs.locks
	t.mu.Lock()
	e := t.try(in)
	t.mu.Unlock()
	return e
}

// try takes, changes or drops in's lock without waiting; t.mu is held.
func (t *lockTable) try(in *gofuse.LkIn) syscall.Errno {
	if in.LkFlags&gofuse.FUSE_LK_FLOCK != 0 {
		if !t.flock {
			return syscall.ENOSYS
		}
		op, e := flockOp(in.Lk.Typ)
		if e != 0 {
			return e
		}
		f, e := t.fs.file(in.NodeId, in.Fh)
		if e != 0 {
			return e
		}
		defer f.put()
		if err := unix.Flock(f.fd, op|unix.LOCK_NB); err != nil {
			return conflict(err)
		}
		t.flocked[in.Fh] = op != unix.LOCK_UN
		if op == unix.LOCK_UN {
			delete(t.flocked, in.Fh)
		}
		// A conversion lets go of the lock it had first.
		t.letGo(in.NodeId)
		return 0
	}
	if !t.posix {
		return syscall.ENOSYS
	}
	fl, e := hostLock(&in.Lk)
	if e != 0 {
		return e
	}
	// The handle must be the node's open file, whatever the owner holds
	// (an unlock too).
	f, e := t.fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return e
	}
	o, e := t.owner(lockKey{in.NodeId, in.Owner}, f, fl.Type != unix.F_UNLCK)
	f.put()
	if e != 0 || o == nil {
		return e // no description: nothing held to unlock
	}
	if err := unix.FcntlFlock(uintptr(o.fd), unix.F_OFD_SETLK, &fl); err != nil {
		return conflict(err)
	}
	// An unlock, a downgrade or a split may have let go of something.
	t.letGo(in.NodeId)
	return 0
}

// flockOp maps a lock type to flock's operation.
func flockOp(typ uint32) (int, syscall.Errno) {
	switch typ {
	case unix.F_RDLCK:
		return unix.LOCK_SH, 0
	case unix.F_WRLCK:
		return unix.LOCK_EX, 0
	case unix.F_UNLCK:
		return unix.LOCK_UN, 0
	}
	return 0, syscall.EINVAL
}

// letGo has the waiters on node retried at once; t.mu is held.
func (t *lockTable) letGo(node uint64) {
	found := false
	for _, lw := range t.waits {
		if lw.key.node == node {
			lw.next, lw.wait = time.Time{}, minLockRetry
			found = true
		}
	}
	if found {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// WaitLk implements fuse.LockFileSystem.
func (fs *FS) WaitLk(in *gofuse.LkIn, w *fuse.LockWait) (bool, syscall.Errno) {
	t := fs.locks
	t.mu.Lock()
	defer t.mu.Unlock()
	// The holder may have let go since SetLk.
	if e := t.try(in); e != syscall.EAGAIN {
		return false, e
	}
	if len(t.waits) >= t.maxWaits {
		t.note.note(fs.cfg.Logf, fmt.Sprintf("the guest has %d SETLKWs waiting, the most allowed: more get ENOLCK", len(t.waits)))
		return false, syscall.ENOLCK
	}
	lw := &lockWaiter{w: w, key: lockKey{in.NodeId, in.Owner}, fh: in.Fh, wait: minLockRetry, next: time.Now().Add(minLockRetry)}
	if in.LkFlags&gofuse.FUSE_LK_FLOCK != 0 {
		lw.flock, _ = flockOp(in.Lk.Typ)
		f, e := fs.file(in.NodeId, in.Fh)
		if e != 0 {
			return false, e
		}
		lw.f = f
	} else {
		lw.fl, _ = hostLock(&in.Lk)
		if t.owners[lw.key] == nil {
			return false, syscall.EAGAIN // cannot be: try made it
		}
	}
	t.waits[w] = lw
	if !t.polling {
		t.polling = true
		go t.poll()
	}
	return true, 0
}

// retry tries lw's lock again; t.mu is held. It reports whether the wait
// is over, and how.
func (t *lockTable) retry(lw *lockWaiter) (bool, syscall.Errno) {
	if lw.f != nil {
		if err := unix.Flock(lw.f.fd, lw.flock|unix.LOCK_NB); err != nil {
			if e := conflict(err); e != syscall.EAGAIN {
				return true, e
			}
			return false, 0
		}
		t.flocked[lw.fh] = true
		return true, 0
	}
	o := t.owners[lw.key]
	if o == nil {
		return true, syscall.EINTR // dropped meanwhile
	}
	fl := lw.fl
	if err := unix.FcntlFlock(uintptr(o.fd), unix.F_OFD_SETLK, &fl); err != nil {
		if e := conflict(err); e != syscall.EAGAIN {
			return true, e
		}
		return false, 0
	}
	return true, 0
}

// endLocked takes lw off the waits; t.mu is held. The caller then calls
// lw.w.Done, without t.mu.
func (t *lockTable) endLocked(lw *lockWaiter) {
	delete(t.waits, lw.w)
	if lw.f != nil {
		lw.f.put()
		lw.f = nil
	}
}

// ended is a wait that is over, to be told.
type ended struct {
	w  *fuse.LockWait
	st syscall.Errno
}

// poll retries the waiters when they are due, or at once when a lock is
// let go, until none is left.
func (t *lockTable) poll() {
	timer := time.NewTimer(maxLockRetry)
	defer timer.Stop()
	var done []ended
	for {
		t.mu.Lock()
		if len(t.waits) == 0 {
			t.polling = false
			t.mu.Unlock()
			return
		}
		now := time.Now()
		next := now.Add(maxLockRetry)
		done = done[:0]
		for _, lw := range t.waits {
			if lw.next.After(now) {
				if lw.next.Before(next) {
					next = lw.next
				}
				continue
			}
			if over, st := t.retry(lw); over {
				t.endLocked(lw)
				done = append(done, ended{lw.w, st})
				continue
			}
			lw.wait = min(2*lw.wait, maxLockRetry)
			lw.next = now.Add(lw.wait)
			if lw.next.Before(next) {
				next = lw.next
			}
		}
		t.mu.Unlock()
		for _, d := range done {
			d.w.Done(d.st)
		}
		clear(done)
		timer.Reset(time.Until(next))
		select {
		case <-t.wake:
		case <-timer.C:
		}
	}
}

// CancelLk implements fuse.LockFileSystem.
func (fs *FS) CancelLk(w *fuse.LockWait) {
	t := fs.locks
	t.mu.Lock()
	lw := t.waits[w]
	if lw != nil {
		t.endLocked(lw)
	}
	t.mu.Unlock()
	if lw != nil {
		w.Done(w.CancelStatus())
	}
}

// ReleaseOwner implements fuse.LockFileSystem.
func (fs *FS) ReleaseOwner(node, fh, owner uint64, release, flockUnlock bool) {
	t := fs.locks
	var done []ended
	t.mu.Lock()
	key := lockKey{node, owner}
	for _, lw := range t.waits {
		if (lw.f == nil && lw.key == key) || (release && lw.f != nil && lw.key.node == node && lw.fh == fh) {
			t.endLocked(lw)
			done = append(done, ended{lw.w, syscall.EINTR})
		}
	}
	let := false
	if o := t.owners[key]; o != nil {
		t.dropOwner(key, o)
		let = true
	}
	if release {
		delete(t.flocked, fh)
	}
	if release && flockUnlock && t.flock {
		if f, e := fs.file(node, fh); e == 0 {
			unix.Flock(f.fd, unix.LOCK_UN)
			f.put()
			let = true
		}
	}
	if let {
		t.letGo(node)
	}
	t.mu.Unlock()
	for _, d := range done {
		d.w.Done(d.st)
	}
}

// reset drops every lock and ends every wait with EINTR (DESTROY, the
// device's reset).
func (t *lockTable) reset() {
	var done []ended
	t.mu.Lock()
	for _, lw := range t.waits {
		t.endLocked(lw)
		done = append(done, ended{lw.w, syscall.EINTR})
	}
	for key, o := range t.owners {
		t.dropOwner(key, o)
	}
	clear(t.flocked)
	t.mu.Unlock()
	for _, d := range done {
		d.w.Done(d.st)
	}
}

// held reports how many guest lock owners hold a host description and
// how many SETLKWs wait.
func (t *lockTable) held() (owners, waits int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.owners), len(t.waits)
}

// migrationRefusal is why the FS cannot be migrated now, or nil: locks are
// not carried to the destination (the host's locks stay with this
// daemon's descriptions), so a guest holding one (a lock owner with a
// description, which may hold locks, or a handle with a flock) must let
// go first.
func (t *lockTable) migrationRefusal() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.owners) == 0 && len(t.flocked) == 0 {
		return nil
	}
	return fmt.Errorf("the guest holds locks forwarded to the host (%d POSIX lock owners, %d open files with a flock): they cannot be migrated; release them, or keep locks in the guest (-o no_posix_lock,no_flock)", len(t.owners), len(t.flocked))
}
