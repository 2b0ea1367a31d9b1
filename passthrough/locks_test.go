package passthrough

import (
	"encoding/binary"

	"math"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const (
	opGetlk  = 31
	opSetlk  = 32
	opSetlkw = 33
	opFlush  = 25
	opInit   = 26
)

// lockGuest drives an FS through a fuse.Server as a guest would, parking
// SETLKWs as the vhost-user back-end does.
type lockGuest struct {
	t      *testing.T
	fs     *FS
	srv    *fuse.Server
	w      *fuse.Worker
	unique uint64
	mu     sync.Mutex
	parked []*guestPending
}

// guestPending is a parked request's reply to come.
type guestPending struct {
	g      *lockGuest
	c      fuse.Canceler
	out    []byte
	n      uint32
	doneCh chan struct{}
}

func (p *guestPending) Complete(fill func([][]byte) uint32) bool {
	select {
	case <-p.doneCh:
		return false
	default:
	}
	p.n = fill([][]byte{p.out})
	close(p.doneCh)
	return true
}

// errno waits up to d for the reply and returns its errno; ok is false
// when none came.
func (p *guestPending) errno(d time.Duration) (syscall.Errno, bool) {
	select {
	case <-p.doneCh:
	case <-time.After(d):
		return 0, false
	}
	if p.n != 16 {
		p.g.t.Fatalf("parked reply of %d bytes", p.n)
	}
	return syscall.Errno(-int32(binary.LittleEndian.Uint32(p.out[4:]))), true
}

type guestParker struct{ g *lockGuest }

func (p guestParker) Park(c fuse.Canceler) fuse.Pending {
	gp := &guestPending{g: p.g, c: c, out: make([]byte, 64), doneCh: make(chan struct{})}
	p.g.mu.Lock()
	p.g.parked = append(p.g.parked, gp)
	p.g.mu.Unlock()
	return gp
}

func newLockGuest(t *testing.T, cfg Config) (*lockGuest, string) {
	fs, root := newFS(t, cfg)
	g := &lockGuest{t: t, fs: fs}
	g.srv = fuse.NewServer(fs, fuse.Config{Capabilities: fs.Capabilities()})
	g.w = g.srv.NewWorker()
	in := gofuse.InitIn{Major: 7, Minor: 41, Flags: 0x7fffffff}
	if st, _ := g.call(opInit, 0, structBytes(&in)[int(unsafe.Sizeof(gofuse.InHeader{})):]); st != 0 {
		t.Fatalf("INIT: %v", st)
	}
	t.Cleanup(g.srv.Reset)
	return g, root
}

// call sends op on node with the argument bytes and returns the reply's
// errno and body; a parked request returns its Pending instead.
func (g *lockGuest) call(op uint32, node uint64, args []byte) (syscall.Errno, []byte) {
	st, body, _ := g.callParking(op, node, args)
	return st, body
}

func (g *lockGuest) callParking(op uint32, node uint64, args []byte) (syscall.Errno, []byte, *guestPending) {
	g.unique += 2
	h := gofuse.InHeader{Opcode: op, Unique: g.unique, NodeId: node}
	h.Length = uint32(int(unsafe.Sizeof(h)) + len(args))
	req := append(append([]byte(nil), structBytes(&h)...), args...)
	out := make([]byte, 4096)
	g.mu.Lock()
	before := len(g.parked)
	g.mu.Unlock()
	n := g.w.ServeParking([][]byte{req}, [][]byte{out}, guestParker{g})
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.parked) > before {
		return 0, nil, g.parked[len(g.parked)-1]
	}
	if n < 16 {
		g.t.Fatalf("opcode %d: reply of %d bytes", op, n)
	}
	return syscall.Errno(-int32(binary.LittleEndian.Uint32(out[4:]))), out[16:n], nil
}

// lk is a guest lock request.
func lk(fh, owner uint64, typ uint32, start, end uint64, flock bool) []byte {
	in := gofuse.LkIn{Fh: fh, Owner: owner, Lk: gofuse.FileLock{Start: start, End: end, Typ: typ, Pid: 42}}
	if flock {
		in.LkFlags = gofuse.FUSE_LK_FLOCK
	}
	return structBytes(&in)[int(unsafe.Sizeof(gofuse.InHeader{})):]
}

func (g *lockGuest) setlk(node, fh, owner uint64, typ uint32, start, end uint64) syscall.Errno {
	st, _ := g.call(opSetlk, node, lk(fh, owner, typ, start, end, false))
	return st
}

func (g *lockGuest) getlk(node, fh, owner uint64, typ uint32, start, end uint64) gofuse.FileLock {
	st, body := g.call(opGetlk, node, lk(fh, owner, typ, start, end, false))
	require.Zero(g.t, st, "GETLK")
	return *(*gofuse.FileLock)(unsafe.Pointer(&body[0]))
}

func (g *lockGuest) flush(node, fh, owner uint64) {
	in := gofuse.FlushIn{Fh: fh, LockOwner: owner}
	g.call(opFlush, node, structBytes(&in)[int(unsafe.Sizeof(gofuse.InHeader{})):])
}

// hostTry takes a traditional (process) lock on path, as a host program
// would, and reports the errno; the lock stays until the returned
// descriptor is closed.
func hostTry(t *testing.T, path string, typ int16, start, length int64) (int, syscall.Errno) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	fl := unix.Flock_t{Type: typ, Whence: 0, Start: start, Len: length}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &fl); err != nil {
		unix.Close(fd)
		return -1, conflict(err)
	}
	return fd, 0
}

const eof = math.MaxInt64

// TestLocksMatchHostOFD: a sequence of guest lock requests from three
// owners, and the same sequence run by the host with one open file
// description per owner (the oracle): every step answers the same, and
// GETLK reports the same conflicting lock (range and type).
func TestLocksMatchHostOFD(t *testing.T) {
	g, root := newLockGuest(t, Config{})
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	oracle := filepath.Join(root, "oracle")
	require.NoError(t, os.WriteFile(oracle, nil, 0o644))
	var ofd [3]int
	for i := range ofd {
		fd, err := unix.Open(oracle, unix.O_RDWR|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		ofd[i] = fd
	}
	type step struct {
		get        bool
		owner      int
		typ        uint32
		start, end uint64
	}
	steps := []step{
		{false, 0, unix.F_RDLCK, 0, 99},
		{false, 1, unix.F_RDLCK, 50, 149}, // shared
		{false, 2, unix.F_WRLCK, 90, 95},  // refused
		{true, 2, unix.F_WRLCK, 90, 95},
		{false, 0, unix.F_WRLCK, 0, 40},  // upgrade of part: splits owner 0's lock
		{true, 1, unix.F_RDLCK, 0, 10},   // owner 0's write lock
		{false, 0, unix.F_UNLCK, 20, 30}, // a hole in it
		{false, 2, unix.F_WRLCK, 20, 30}, // the hole is free
		{false, 1, unix.F_UNLCK, 0, eof},
		{false, 2, unix.F_WRLCK, 100, eof},
		{true, 0, unix.F_RDLCK, 1000, 1000},
		{false, 0, unix.F_WRLCK, 200, eof}, // refused: owner 2 to the end
		{false, 2, unix.F_UNLCK, 0, eof},
		{false, 0, unix.F_WRLCK, 200, eof},
		{true, 1, unix.F_WRLCK, 0, eof},
	}
	for i, s := range steps {
		fl, e := hostLock(&gofuse.FileLock{Start: s.start, End: s.end, Typ: s.typ})
		require.Zero(t, e)
		if s.get {
			got := g.getlk(c.NodeId, c.Fh, uint64(100+s.owner), s.typ, s.start, s.end)
			require.NoError(t, unix.FcntlFlock(uintptr(ofd[s.owner]), unix.F_OFD_GETLK, &fl))
			var want gofuse.FileLock
			guestLock(&fl, &want)
			require.Equal(t, want, got, "step %d: GETLK", i)
			continue
		}
		got := g.setlk(c.NodeId, c.Fh, uint64(100+s.owner), s.typ, s.start, s.end)
		var want syscall.Errno
		if err := unix.FcntlFlock(uintptr(ofd[s.owner]), unix.F_OFD_SETLK, &fl); err != nil {
			want = conflict(err)
		}
		require.Equal(t, want, got, "step %d: SETLK %+v", i, s)
	}
}

// TestLocksCrossTheHost: a guest's lock stops a host process's and the
// reverse; GETLK shows the host's lock with l_pid -1; the owner's FLUSH
// lets the host in.
func TestLocksCrossTheHost(t *testing.T) {
	g, root := newLockGuest(t, Config{})
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	path := filepath.Join(root, "f")
	require.Zero(t, g.setlk(c.NodeId, c.Fh, 7, unix.F_WRLCK, 0, 9))
	_, e := hostTry(t, path, unix.F_WRLCK, 5, 1)
	require.Equal(t, syscall.EAGAIN, e, "host lock over the guest's")
	fd, e := hostTry(t, path, unix.F_WRLCK, 10, 10)
	require.Zero(t, e, "host lock beside the guest's")
	require.Equal(t, syscall.EAGAIN, g.setlk(c.NodeId, c.Fh, 8, unix.F_RDLCK, 15, 15), "guest lock over the host's")
	got := g.getlk(c.NodeId, c.Fh, 8, unix.F_RDLCK, 12, 100)
	require.Equal(t, gofuse.FileLock{Start: 10, End: 19, Typ: unix.F_WRLCK, Pid: math.MaxUint32}, got)
	unix.Close(fd)
	require.Zero(t, g.setlk(c.NodeId, c.Fh, 8, unix.F_RDLCK, 15, 15))
	g.flush(c.NodeId, c.Fh, 7)
	fd, e = hostTry(t, path, unix.F_WRLCK, 0, 10)
	require.Zero(t, e, "host lock after the guest owner's FLUSH")
	unix.Close(fd)
	owners, _ := g.fs.locks.held()
	require.Equal(t, 1, owners, "owner 8 still holds its description")
}

// TestLockHandleOfAnotherNode: GETLK and SETLK (a lock or an unlock)
// naming a node with another node's handle, or a handle never opened, are
// EBADF, also for a lock owner that holds a lock on the node (and so has
// its description): the owner's lock stays.
func TestLockHandleOfAnotherNode(t *testing.T) {
	g, root := newLockGuest(t, Config{})
	f := create(t, g.fs, RootID, "f", unix.O_RDWR)
	o := create(t, g.fs, RootID, "o", unix.O_RDWR)
	require.Zero(t, g.setlk(f.NodeId, f.Fh, 7, unix.F_WRLCK, 0, 9))
	for _, fh := range []uint64{o.Fh, 1 << 40} {
		for _, owner := range []uint64{7, 8} {
			for _, typ := range []uint32{unix.F_WRLCK, unix.F_UNLCK} {
				require.Equal(t, syscall.EBADF, g.setlk(f.NodeId, fh, owner, typ, 0, eof), "SETLK type %d, owner %d, handle %d", typ, owner, fh)
			}
			st, _ := g.call(opGetlk, f.NodeId, lk(fh, owner, unix.F_WRLCK, 0, eof, false))
			require.Equal(t, syscall.EBADF, st, "GETLK owner %d, handle %d", owner, fh)
		}
	}
	_, e := hostTry(t, filepath.Join(root, "f"), unix.F_WRLCK, 5, 1)
	require.Equal(t, syscall.EAGAIN, e, "owner 7 keeps its lock")
	fd, e := hostTry(t, filepath.Join(root, "o"), unix.F_WRLCK, 0, 0)
	require.Zero(t, e, "nothing locked on o")
	unix.Close(fd)
}

// TestSetlkwWaits: a SETLKW on a lock a host process holds is parked, and
// granted once the host lets go (seen by the retry timer); one on a lock
// another guest owner holds is granted as soon as that owner unlocks; a
// FLUSH by the waiting owner, and DESTROY, end a wait with EINTR.
func TestSetlkwWaits(t *testing.T) {
	g, root := newLockGuest(t, Config{})
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	path := filepath.Join(root, "f")
	fd, e := hostTry(t, path, unix.F_WRLCK, 0, 0)
	require.Zero(t, e)
	_, _, p := g.callParking(opSetlkw, c.NodeId, lk(c.Fh, 1, unix.F_WRLCK, 0, eof, false))
	require.NotNil(t, p, "SETLKW on a held lock was answered at once")
	if _, done := p.errno(100 * time.Millisecond); done {
		t.Fatal("SETLKW granted while the host holds the lock")
	}
	require.Equal(t, 1, g.srv.Waiting())
	unix.Close(fd)
	start := time.Now()
	st, done := p.errno(5 * time.Second)
	require.True(t, done, "SETLKW not granted after the host's unlock")
	require.Zero(t, st)
	t.Logf("granted %v after the host's unlock", time.Since(start))
	require.Less(t, time.Since(start), time.Second)

	// Another guest owner waits for owner 1, which unlocks: the waiter is
	// retried at once, not at its next tick (up to 50 ms away), each of
	// five times.
	for i := 0; i < 5; i++ {
		if i > 0 {
			require.Zero(t, g.setlk(c.NodeId, c.Fh, 2, unix.F_UNLCK, 0, eof))
			require.Zero(t, g.setlk(c.NodeId, c.Fh, 1, unix.F_WRLCK, 0, eof))
		}
		_, _, p = g.callParking(opSetlkw, c.NodeId, lk(c.Fh, 2, unix.F_RDLCK, 10, 20, false))
		require.NotNil(t, p)
		time.Sleep(120 * time.Millisecond) // the waiter's retries back off to their slowest
		start = time.Now()
		require.Zero(t, g.setlk(c.NodeId, c.Fh, 1, unix.F_UNLCK, 0, eof))
		st, done = p.errno(5 * time.Second)
		require.True(t, done)
		require.Zero(t, st)
		t.Logf("granted %v after the other owner's unlock", time.Since(start))
		require.Less(t, time.Since(start), 10*time.Millisecond, "not retried at once when the daemon let go")
	}

	// FLUSH by the waiting owner ends its wait.
	require.Zero(t, g.setlk(c.NodeId, c.Fh, 1, unix.F_WRLCK, 0, 0))
	_, _, p = g.callParking(opSetlkw, c.NodeId, lk(c.Fh, 3, unix.F_WRLCK, 0, 0, false))
	require.NotNil(t, p)
	g.flush(c.NodeId, c.Fh, 3)
	st, done = p.errno(time.Second)
	require.True(t, done)
	require.Equal(t, syscall.EINTR, st)

	// DESTROY ends every wait and drops every lock.
	_, _, p = g.callParking(opSetlkw, c.NodeId, lk(c.Fh, 4, unix.F_WRLCK, 0, 0, false))
	require.NotNil(t, p)
	g.srv.Reset()
	st, done = p.errno(time.Second)
	require.True(t, done)
	require.Equal(t, syscall.EINTR, st)
	owners, waits := g.fs.locks.held()
	require.Zero(t, owners+waits)
	fd, e = hostTry(t, path, unix.F_WRLCK, 0, 0)
	require.Zero(t, e, "a lock survived DESTROY")
	unix.Close(fd)
}

// TestFlockCrossesTheHost: a guest flock (SETLK with FUSE_LK_FLOCK) goes on
// its handle's host descriptor: it stops a host flock and the reverse, two
// guest handles of one file conflict as two opens do, a SETLKW waits for
// the host's unlock, and RELEASE with FLOCK_UNLOCK drops it.
func TestFlockCrossesTheHost(t *testing.T) {
	g, root := newLockGuest(t, Config{})
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	path := filepath.Join(root, "f")
	var oo gofuse.OpenOut
	require.Zero(t, g.fs.Open(&gofuse.OpenIn{InHeader: hdr(c.NodeId), Flags: unix.O_RDONLY}, &oo))
	flock := func(fh uint64, typ uint32) syscall.Errno {
		st, _ := g.call(opSetlk, c.NodeId, lk(fh, fh, typ, 0, eof, true))
		return st
	}
	host, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(host)
	require.Zero(t, flock(c.Fh, unix.F_WRLCK))
	require.Equal(t, unix.EWOULDBLOCK, unix.Flock(host, unix.LOCK_SH|unix.LOCK_NB), "host flock over the guest's")
	require.Equal(t, syscall.EAGAIN, flock(oo.Fh, unix.F_RDLCK), "second guest handle")
	// POSIX locks are independent of flock.
	require.Zero(t, g.setlk(c.NodeId, c.Fh, 9, unix.F_WRLCK, 0, eof))
	require.Zero(t, flock(c.Fh, unix.F_UNLCK))
	require.NoError(t, unix.Flock(host, unix.LOCK_EX|unix.LOCK_NB))
	require.Equal(t, syscall.EAGAIN, flock(c.Fh, unix.F_RDLCK), "guest flock over the host's")
	_, _, p := g.callParking(opSetlkw, c.NodeId, lk(oo.Fh, oo.Fh, unix.F_RDLCK, 0, eof, true))
	require.NotNil(t, p)
	require.NoError(t, unix.Flock(host, unix.LOCK_UN))
	st, done := p.errno(5 * time.Second)
	require.True(t, done)
	require.Zero(t, st)
	require.Equal(t, unix.EWOULDBLOCK, unix.Flock(host, unix.LOCK_EX|unix.LOCK_NB))
	rel := gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: oo.Fh, ReleaseFlags: gofuse.FUSE_RELEASE_FLOCK_UNLOCK, LockOwner: oo.Fh}
	rel.Opcode, rel.Unique, rel.Length = 18, 99, uint32(unsafe.Sizeof(rel))
	g.w.Serve([][]byte{structBytes(&rel)}, [][]byte{make([]byte, 64)})
	require.NoError(t, unix.Flock(host, unix.LOCK_EX|unix.LOCK_NB), "flock left after RELEASE")
}

// TestLocksKeptLocal: with LocalPosixLocks and LocalFlock the FS offers
// neither capability and answers lock requests ENOSYS.
func TestLocksKeptLocal(t *testing.T) {
	fs, _ := newFS(t, Config{LocalPosixLocks: true, LocalFlock: true})
	require.Zero(t, fs.LockCaps())
	fs2, _ := newFS(t, Config{LocalFlock: true})
	require.Equal(t, uint64(gofuse.CAP_POSIX_LOCKS), fs2.LockCaps())
	c := create(t, fs, RootID, "f", unix.O_RDWR)
	in := gofuse.LkIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Owner: 1, Lk: gofuse.FileLock{Typ: unix.F_WRLCK, End: eof}}
	require.Equal(t, syscall.ENOSYS, fs.SetLk(&in))
}

// TestLockBounds: past the lock owners' bound a new owner's lock is ENOLCK,
// as is a SETLKW past the waits' bound; the owners before keep theirs.
func TestLockBounds(t *testing.T) {
	g, _ := newLockGuest(t, Config{})
	g.fs.locks.maxOwners, g.fs.locks.maxWaits = 3, 2
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	for o := uint64(0); o < 3; o++ {
		require.Zero(t, g.setlk(c.NodeId, c.Fh, o, unix.F_RDLCK, o, o))
	}
	require.Equal(t, syscall.ENOLCK, g.setlk(c.NodeId, c.Fh, 3, unix.F_RDLCK, 3, 3))
	require.Zero(t, g.setlk(c.NodeId, c.Fh, 0, unix.F_WRLCK, 10, 10), "an owner within the bound")
	for o := uint64(1); o < 3; o++ {
		_, _, p := g.callParking(opSetlkw, c.NodeId, lk(c.Fh, o, unix.F_WRLCK, 10, 10, false))
		require.NotNil(t, p)
	}
	_, _, p := g.callParking(opSetlkw, c.NodeId, lk(c.Fh, 2, unix.F_WRLCK, 10, 10, false))
	st, done := p.errno(time.Second)
	require.True(t, done)
	require.Equal(t, syscall.ENOLCK, st)
}

// TestLockWaitersCost: 1,000 parked SETLKWs on locks a host process holds
// cost little CPU while they wait (one goroutine retries them, backing off
// to 50 ms), one descriptor per waiting owner, and nothing once they are
// gone. The figures are logged.
func TestLockWaitersCost(t *testing.T) {
	const n = 1000
	g, root := newLockGuest(t, Config{})
	fdsBefore := countFds(t)
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	hostFd, e := hostTry(t, filepath.Join(root, "f"), unix.F_WRLCK, 0, 0)
	require.Zero(t, e)
	var ps []*guestPending
	for o := uint64(0); o < n; o++ {
		_, _, p := g.callParking(opSetlkw, c.NodeId, lk(c.Fh, 1000+o, unix.F_WRLCK, 0, eof, false))
		require.NotNil(t, p)
		ps = append(ps, p)
	}
	fdsDuring := countFds(t)
	time.Sleep(300 * time.Millisecond) // backed off
	var r0, r1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &r0)
	const span = 2 * time.Second
	time.Sleep(span)
	unix.Getrusage(unix.RUSAGE_SELF, &r1)
	cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
	share := float64(cpu) / float64(span)
	unix.Close(hostFd)
	// One of them gets the lock.
	granted := 0
	for deadline := time.Now().Add(5 * time.Second); granted == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		for _, p := range ps {
			if st, done := p.errno(0); done && st == 0 {
				granted++
			}
		}
	}
	require.Equal(t, 1, granted, "waiters granted the lock after the host's unlock")
	g.srv.Reset()
	for _, p := range ps {
		_, done := p.errno(time.Second)
		require.True(t, done)
	}
	fs := g.fs
	fs.openFiles.clear()
	fs.Forget(c.NodeId, 1)
	fdsAfter := countFds(t)
	t.Logf("%d waiters: %v CPU in %v (%.1f%% of a CPU); descriptors %d before, %d while waiting, %d after", n, cpu, span, 100*share, fdsBefore, fdsDuring, fdsAfter)
	require.Less(t, share, 0.10, "parked waiters keep the daemon busy")
	require.LessOrEqual(t, fdsDuring-fdsBefore, n+3, "one per owner, plus the file's handle, its inode and the host's")
	require.LessOrEqual(t, fdsAfter, fdsBefore)
}

func countFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// TestLocksRefuseMigration: the device state is not saved while the guest
// holds a forwarded lock (a POSIX lock owner's description, a flock); it
// is once they are let go.
func TestLocksRefuseMigration(t *testing.T) {
	g, _ := newLockGuest(t, Config{})
	c := create(t, g.fs, RootID, "f", unix.O_RDWR)
	m := g.fs.Migration(MigrationConfig{})
	require.Zero(t, g.setlk(c.NodeId, c.Fh, 5, unix.F_RDLCK, 0, 0))
	_, err := m.SaveState()
	require.ErrorContains(t, err, "1 POSIX lock owners")
	g.flush(c.NodeId, c.Fh, 5)
	st, _ := g.call(opSetlk, c.NodeId, lk(c.Fh, c.Fh, unix.F_WRLCK, 0, eof, true))
	require.Zero(t, st)
	_, err = m.SaveState()
	require.ErrorContains(t, err, "1 open files with a flock")
	st, _ = g.call(opSetlk, c.NodeId, lk(c.Fh, c.Fh, unix.F_UNLCK, 0, eof, true))
	require.Zero(t, st)
	_, err = m.SaveState()
	require.NoError(t, err)
}
