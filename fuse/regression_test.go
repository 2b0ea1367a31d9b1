package fuse

// Regression tests for bugs found by review; each comment says what went
// wrong and how it was fixed.

import (
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// Fixed bug (ops.go, (*Worker).init): when Config.Capabilities lacks
// CAP_INIT_EXT but holds flags2 bits (CAP_SECURITY_CTX, ...), a guest that
// offers INIT_EXT gets Flags2 = 0 in the reply (correct: without INIT_EXT
// the guest ignores flags2), yet the server records the flags2 bits as
// negotiated and hands them to FileSystem.Init and Negotiated(). The
// FileSystem then believes, e.g., that security contexts were agreed on
// while the guest believes the opposite.
//
// Fixed by: after `flags := offered & w.s.cfg.Capabilities`, add
//
//	if flags&fuse.CAP_INIT_EXT == 0 {
//		flags &= 0xffffffff // flags2 exists only if INIT_EXT is agreed
//	}
//
// (the `if flags&fuse.CAP_INIT_EXT != 0` around out.Flags2 may then go).
func TestRegressionFlags2NegotiatedWithoutInitExt(t *testing.T) {
	c := newClientCfg(t, layouts[0], Config{Capabilities: gofuse.CAP_ASYNC_READ | gofuse.CAP_SECURITY_CTX})
	out := c.init()
	if out.Flags != gofuse.CAP_ASYNC_READ || out.Flags2 != 0 {
		t.Fatalf("told the guest %#x/%#x", out.Flags, out.Flags2)
	}
	if got := c.srv.Negotiated(); got != gofuse.CAP_ASYNC_READ {
		t.Errorf("Negotiated() = %#x, the guest was told %#x", got, out.Flags)
	}
	if got := c.fs.lastInit.Flags; got != gofuse.CAP_ASYNC_READ {
		t.Errorf("FileSystem.Init got flags %#x, the guest was told %#x", got, out.Flags)
	}
}

// Fixed bug (server.go, Serve / reply): the room for the reply is checked
// only after the FileSystem method ran. When the writable part is too small
// for the reply, the guest gets EINVAL, but the operation already took
// effect: LOOKUP and READDIRPLUS took node references the guest will never
// FORGET, CREATE left a file and an open handle nobody will RELEASE (a host
// fd in the passthrough FS), MKDIR/SYMLINK/... created entries, WRITE wrote.
// Only a misbehaving guest does this, but it leaks server state the guest
// cannot name.
//
// Fixed by: give each op its fixed reply size and refuse before dispatching:
//
//	// in type op:
//	replySize int // fixed reply body, checked before the handler runs
//	// in the table, e.g.:
//	opLookup: {..., replySize: entryOutSize}, (also MKNOD, MKDIR, SYMLINK, LINK)
//	opCreate: {..., replySize: int(unsafe.Sizeof(fuse.CreateOut{}))},
//	opOpen/opOpendir: OpenOut, opGetattr/opSetattr: AttrOut,
//	opWrite/opCopyFileRange: WriteOut, opStatfs: StatfsOut, opLseek: LseekOut
//	// in Serve, after the INIT check and before dispatching:
//	room := total(out) - outHeaderSize
//	if !o.noReply && room < o.replySize {
//		return w.reply(out, 0, syscall.EINVAL)
//	}
//	w.room = room
//
// and in readdirCommon bound the listing by the room as well:
//
//	size := min(int(in.Size), outBufSize-outHeaderSize, w.room)
func TestRegressionSideEffectsWithoutRoomForReply(t *testing.T) {
	c := newSession(t, layouts[1])
	d := c.mkdir(root, "d", 0o755)
	for i := range 3 {
		f := c.create(d.NodeId, string(rune('a'+i)), syscall.O_RDWR, 0o644)
		c.release(f.NodeId, f.Fh)
		c.forget(f.NodeId, 1)
	}

	lookupsBefore := c.fs.lookups(d.NodeId)
	if r := c.serve(c.build(opLookup, root, cstr("d")), outHeaderSize); r.errno() != syscall.EINVAL {
		t.Fatalf("LOOKUP with no room: %v", r.errno())
	}
	if got := c.fs.lookups(d.NodeId); got != lookupsBefore {
		t.Errorf("LOOKUP answered EINVAL but took a reference (%d -> %d lookups)", lookupsBefore, got)
	}

	handlesBefore := c.fs.handleCount()
	if r := c.serve(c.build(opCreate, d.NodeId, args(&gofuse.CreateIn{Flags: syscall.O_RDWR, Mode: 0o644}), cstr("new")), outHeaderSize+100); r.errno() != syscall.EINVAL {
		t.Fatalf("CREATE with no room: %v", r.errno())
	}
	if got := c.fs.handleCount(); got != handlesBefore {
		t.Errorf("CREATE answered EINVAL but left %d open handle(s)", got-handlesBefore)
	}
	if _, exists := c.fs.contents("d", "new"); exists {
		t.Errorf("CREATE answered EINVAL but created the file")
	}

	// READDIRPLUS asking for more than the writable part holds.
	fh := c.opendir(d.NodeId)
	r := c.serve(c.build(opReaddirplus, d.NodeId, args(&gofuse.ReadIn{Fh: fh, Size: 4096})), outHeaderSize+200)
	if r.errno() == syscall.EINVAL {
		for _, name := range []string{"a", "b", "c"} {
			e := c.lookup(d.NodeId, name)
			if got := c.fs.lookups(e.NodeId); got != 1 {
				t.Errorf("READDIRPLUS answered EINVAL but %q holds %d lookups, want 1", name, got)
			}
			c.forget(e.NodeId, 1)
		}
	}
}
