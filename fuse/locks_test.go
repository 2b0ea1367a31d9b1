package fuse

import (
	"sync"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// lockMemFS is memFS with a toy lock table: one exclusive whole-file lock
// per node, by owner, and the SETLKWs waiting for it.
type lockMemFS struct {
	*memFS
	caps     uint64
	mu       sync.Mutex
	holder   map[uint64]uint64 // node -> owner
	waits    []*LockWait
	released []string // ReleaseOwner calls
}

func newLockMemFS() *lockMemFS {
	return &lockMemFS{memFS: newMemFS(), caps: gofuse.CAP_POSIX_LOCKS | gofuse.CAP_FLOCK_LOCKS, holder: map[uint64]uint64{}}
}

func (fs *lockMemFS) LockCaps() uint64 { return fs.caps }

func (fs *lockMemFS) GetLk(in *gofuse.LkIn, out *gofuse.LkOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out.Lk.Typ = syscall.F_UNLCK
	if o, ok := fs.holder[in.NodeId]; ok && o != in.Owner {
		out.Lk = gofuse.FileLock{Start: 0, End: 1<<63 - 1, Typ: syscall.F_WRLCK, Pid: ^uint32(0)}
	}
	return OK
}

func (fs *lockMemFS) SetLk(in *gofuse.LkIn) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.setLocked(in)
}

func (fs *lockMemFS) setLocked(in *gofuse.LkIn) Status {
	o, held := fs.holder[in.NodeId]
	if in.Lk.Typ == syscall.F_UNLCK {
		if held && o == in.Owner {
			delete(fs.holder, in.NodeId)
			fs.wakeLocked(in.NodeId)
		}
		return OK
	}
	if held && o != in.Owner {
		return syscall.EAGAIN
	}
	fs.holder[in.NodeId] = in.Owner
	return OK
}

// wakeLocked grants the first wait on node.
func (fs *lockMemFS) wakeLocked(node uint64) {
	for i, w := range fs.waits {
		if w.In.NodeId == node && fs.setLocked(&w.In) == OK {
			fs.waits = append(fs.waits[:i], fs.waits[i+1:]...)
			w.Done(OK)
			return
		}
	}
}

func (fs *lockMemFS) WaitLk(in *gofuse.LkIn, w *LockWait) (bool, Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if st := fs.setLocked(in); st != syscall.EAGAIN {
		return false, st
	}
	fs.waits = append(fs.waits, w)
	return true, OK
}

func (fs *lockMemFS) CancelLk(w *LockWait) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i, x := range fs.waits {
		if x == w {
			fs.waits = append(fs.waits[:i], fs.waits[i+1:]...)
			w.Done(w.CancelStatus())
			return
		}
	}
}

func (fs *lockMemFS) ReleaseOwner(node, fh, owner uint64, release, unlock bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	what := "flush"
	if release {
		what = "release"
		if unlock {
			what += "+unlock"
		}
	}
	fs.released = append(fs.released, what)
	if o, ok := fs.holder[node]; ok && o == owner {
		delete(fs.holder, node)
		fs.wakeLocked(node)
	}
}

// testParker parks requests, keeping what they would reply; refuse makes
// it refuse.
type testParker struct {
	refuse bool
	parked []*testPending
}

type testPending struct {
	c     Canceler
	out   [][]byte
	n     uint32
	calls int
}

func (p *testPending) Complete(fill func([][]byte) uint32) bool {
	p.calls++
	if p.calls > 1 {
		return false
	}
	p.n = fill(p.out)
	return true
}

// reply decodes the completed reply.
func (p *testPending) reply(t *testing.T) (gofuse.OutHeader, bool) {
	t.Helper()
	if p.calls == 0 {
		return gofuse.OutHeader{}, false
	}
	if p.calls != 1 || p.n != uint32(outHeaderSize) {
		t.Fatalf("completed %d times, %d bytes", p.calls, p.n)
	}
	return decode[gofuse.OutHeader](t, flatten(p.out, int(p.n))), true
}

type parkCall struct {
	p   *testParker
	out [][]byte
}

func (pc parkCall) Park(c Canceler) Pending {
	if pc.p.refuse {
		return nil
	}
	tp := &testPending{c: c, out: pc.out}
	pc.p.parked = append(pc.p.parked, tp)
	return tp
}

// lockSession is a client of a server on a lockMemFS, after INIT. The
// server is told to offer no lock capability: the LockFileSystem's
// LockCaps decide.
func lockSession(t *testing.T) (*client, *lockMemFS) {
	fs := newLockMemFS()
	c := newClientCfg(t, layout{}, Config{Capabilities: testCaps, Log: quietLogger()})
	c.fs = fs.memFS
	c.srv = NewServer(fs, Config{Capabilities: testCaps, Log: quietLogger()})
	c.w = c.srv.NewWorker()
	c.init()
	return c, fs
}

func lkIn(fh, owner uint64, typ uint32) []byte {
	return args(&gofuse.LkIn{Fh: fh, Owner: owner, Lk: gofuse.FileLock{Start: 0, End: 1<<63 - 1, Typ: typ, Pid: 7}})
}

// serveParking sends req through ServeParking with p and reports whether
// it was parked (no reply written, one more Pending).
func (c *client) serveParking(req []byte, p *testParker) (reply, *testPending) {
	c.t.Helper()
	out := outSegs(c.outSize, c.lay.out)
	before := len(p.parked)
	n := c.w.ServeParking(split(req, c.lay.in), out, parkCall{p, out})
	if len(p.parked) > before {
		return reply{}, p.parked[len(p.parked)-1]
	}
	if err := checkReply(req, out, n); err != nil || n == 0 {
		c.t.Fatalf("%s: %v (%d bytes)", describe(req), err, n)
	}
	b := flatten(out, int(n))
	return reply{n: n, hdr: decode[gofuse.OutHeader](c.t, b), body: b[outHeaderSize:]}, nil
}

// TestLocksWithoutLockFileSystem: a FileSystem that serves no locks gets
// none: GETLK, SETLK and SETLKW are ENOSYS, and INTERRUPT is let be.
func TestLocksWithoutLockFileSystem(t *testing.T) {
	c := newClientCfg(t, layout{}, Config{Capabilities: testCaps})
	c.init()
	if r := c.call(opInterrupt, 0, u64(12345)); r.n != 0 {
		t.Error("INTERRUPT answered")
	}
	for _, op := range []uint32{opGetlk, opSetlk, opSetlkw} {
		c.wantErr(syscall.ENOSYS, op, 1, lkIn(1, 1, syscall.F_WRLCK))
	}
}

// TestSetlkwParks: a SETLKW that finds its lock held is parked, not
// answered, and leaves its worker free; the reply comes when the holder
// lets go (FLUSH by its owner here). An INTERRUPT naming a parked SETLKW
// ends it with EINTR, the transport's Cancel with ENOLCK; a SETLKW that
// cannot be parked is ENOLCK at once.
func TestSetlkwParks(t *testing.T) {
	c, fs := lockSession(t)
	if out := c.init(); out.Flags&(gofuse.CAP_POSIX_LOCKS|gofuse.CAP_FLOCK_LOCKS) != gofuse.CAP_POSIX_LOCKS|gofuse.CAP_FLOCK_LOCKS {
		t.Fatalf("INIT flags %#x: lock capabilities not offered", out.Flags)
	}
	const node = 1
	c.ok(opSetlk, node, lkIn(1, 100, syscall.F_WRLCK))
	c.wantErr(syscall.EAGAIN, opSetlk, node, lkIn(2, 200, syscall.F_WRLCK))
	lk := decode[gofuse.LkOut](t, c.ok(opGetlk, node, lkIn(2, 200, syscall.F_WRLCK)))
	if lk.Lk.Typ != syscall.F_WRLCK {
		t.Errorf("GETLK: %+v, want the write lock of owner 100", lk.Lk)
	}

	p := &testParker{}
	// Without a Parker, and with one that refuses: ENOLCK now.
	c.wantErr(syscall.ENOLCK, opSetlkw, node, lkIn(2, 200, syscall.F_WRLCK))
	p.refuse = true
	if r, pend := c.serveParking(c.build(opSetlkw, node, lkIn(2, 200, syscall.F_WRLCK)), p); pend != nil || r.errno() != syscall.ENOLCK {
		t.Fatalf("SETLKW with a refusing parker: %v, parked %v", r.errno(), pend != nil)
	}
	p.refuse = false

	// Granted when the holder's FLUSH drops its lock.
	_, granted := c.serveParking(c.build(opSetlkw, node, lkIn(2, 200, syscall.F_WRLCK)), p)
	if granted == nil {
		t.Fatal("SETLKW on a held lock was answered, not parked")
	}
	if _, done := granted.reply(t); done {
		t.Fatal("parked SETLKW answered before the lock was let go")
	}
	if n := c.srv.Waiting(); n != 1 {
		t.Errorf("Waiting %d, want 1", n)
	}
	// Another request is served meanwhile.
	c.ok(opGetlk, node, lkIn(2, 300, syscall.F_WRLCK))
	// memFS knows no handle 1 (EBADF): the locks go whatever Flush says.
	c.call(opFlush, node, args(&gofuse.FlushIn{Fh: 1, LockOwner: 100}))
	if h, done := granted.reply(t); !done || h.Status != 0 {
		t.Fatalf("after the holder's FLUSH: done %v, status %d", done, h.Status)
	}
	if fs.holder[node] != 200 {
		t.Errorf("lock held by %d, want 200", fs.holder[node])
	}

	// INTERRUPT naming the parked request ends it with EINTR.
	req := c.build(opSetlkw, node, lkIn(3, 300, syscall.F_WRLCK))
	_, intr := c.serveParking(req, p)
	if intr == nil {
		t.Fatal("SETLKW not parked")
	}
	h := decode[gofuse.InHeader](t, req)
	c.ok(opGetlk, node, lkIn(3, 300, syscall.F_RDLCK)) // an INTERRUPT of another unique is let be
	if r := c.call(opInterrupt, 0, u64(h.Unique+1000)); r.n != 0 {
		t.Fatal("INTERRUPT answered")
	}
	if _, done := intr.reply(t); done {
		t.Fatal("INTERRUPT of another unique ended the wait")
	}
	c.call(opInterrupt, 0, u64(h.Unique))
	if got, done := intr.reply(t); !done || got.Status != -int32(syscall.EINTR) || got.Unique != h.Unique {
		t.Fatalf("after INTERRUPT: done %v, %+v", done, got)
	}

	// The transport's Cancel: ENOLCK, not the EINTR that a Linux guest
	// with no signal pending would pass on as errno 512.
	_, canc := c.serveParking(c.build(opSetlkw, node, lkIn(4, 400, syscall.F_WRLCK)), p)
	canc.c.Cancel()
	canc.c.Cancel()
	if got, done := canc.reply(t); !done || got.Status != -int32(syscall.ENOLCK) {
		t.Fatalf("after Cancel: done %v, %+v", done, got)
	}
	if n := c.srv.Waiting(); n != 0 {
		t.Errorf("Waiting %d after every wait ended", n)
	}

	// RELEASE tells the FileSystem, with the flock owner when asked to.
	c.call(opRelease, node, args(&gofuse.ReleaseIn{Fh: 2, ReleaseFlags: gofuse.FUSE_RELEASE_FLOCK_UNLOCK, LockOwner: 200}))
	if len(fs.released) != 2 || fs.released[1] != "release+unlock" || fs.holder[node] != 0 {
		t.Errorf("ReleaseOwner calls %v, holder %d", fs.released, fs.holder[node])
	}
}

// TestSetlkAllocs: SETLK and GETLK allocate nothing in the server.
func TestSetlkAllocs(t *testing.T) {
	c, _ := lockSession(t)
	set := c.build(opSetlk, 1, lkIn(1, 100, syscall.F_WRLCK))
	get := c.build(opGetlk, 1, lkIn(1, 200, syscall.F_WRLCK))
	in1, in2 := split(set, nil), split(get, nil)
	out := outSegs(4096, nil)
	if n := testing.AllocsPerRun(100, func() {
		c.w.Serve(in1, out)
		c.w.Serve(in2, out)
	}); n != 0 {
		t.Errorf("%.1f allocations per SETLK and GETLK", n)
	}
}
