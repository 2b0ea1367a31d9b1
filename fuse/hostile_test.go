package fuse

import (
	"bytes"
	"encoding/binary"
	"strings"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// Requests a guest can send but a correct driver never does. Each must get
// an errno reply (or none, where the protocol has none) and never panic or
// reach the FileSystem with something it was promised it would not see.

func setLength(req []byte, n uint32) []byte {
	binary.LittleEndian.PutUint32(req[0:], n)
	return req
}

func setExtlen(req []byte, n uint16) []byte {
	binary.LittleEndian.PutUint16(req[36:], n)
	return req
}

// untouched reports whether the server left every writable byte alone.
func untouched(out [][]byte) bool {
	for _, s := range out {
		for _, b := range s {
			if b != 0xA5 {
				return false
			}
		}
	}
	return true
}

func TestHostileShortReadable(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		full := c.build(opGetattr, root, args(&gofuse.GetAttrIn{}))
		for _, n := range []int{0, 1, 8, 16, 39} {
			in := split(full[:n], lay.in)
			out := outSegs(4096, lay.out)
			if got := c.w.Serve(in, out); got != 0 {
				t.Errorf("%d readable bytes: Serve returned %d", n, got)
			}
			if !untouched(out) {
				t.Errorf("%d readable bytes: reply buffer written", n)
			}
		}
		// No readable segments at all, and empty ones.
		if got := c.w.Serve(nil, outSegs(100, nil)); got != 0 {
			t.Errorf("nil readable: %d", got)
		}
		if got := c.w.Serve([][]byte{{}, {}, {}}, outSegs(100, nil)); got != 0 {
			t.Errorf("empty readable: %d", got)
		}
		c.getattr(root)
	})
}

func TestHostileHeaderLength(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		base := func() []byte { return c.build(opGetattr, root, args(&gofuse.GetAttrIn{})) }
		n := uint32(len(base()))
		for _, l := range []uint32{0, 1, 39, n + 1, n + 8, 1 << 20, 0xffffffff} {
			r := c.serve(setLength(base(), l), 4096)
			if r.n == 0 || r.errno() != syscall.EINVAL {
				t.Errorf("Length %d of %d: n %d, %v", l, n, r.n, r.errno())
			}
		}
		// A Length shorter than the readable part: the rest is ignored.
		req := append(base(), bytes.Repeat([]byte{0xee}, 100)...)
		r := c.serve(setLength(req, n), 4096)
		if r.errno() != 0 || len(r.body) != 104 {
			t.Errorf("trailing bytes after Length: %v, %d", r.errno(), len(r.body))
		}
		// A Length that cuts the arguments short.
		r = c.serve(setLength(base(), n-1), 4096)
		if r.errno() != syscall.EINVAL {
			t.Errorf("Length one short of the arguments: %v", r.errno())
		}
		// A LOOKUP whose Length cuts off the name's NUL.
		req = c.build(opLookup, root, cstr("name"))
		if r := c.serve(setLength(req, uint32(len(req)-1)), 4096); r.errno() != syscall.EINVAL {
			t.Errorf("LOOKUP without NUL inside Length: %v", r.errno())
		}
	})
}

func TestHostileShortArgs(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for op := range uint32(len(ops)) {
			o := ops[op]
			if o.argSize == 0 {
				continue
			}
			for _, n := range []int{0, 1, o.argSize - 1} {
				r := c.serve(c.build(op, root, make([]byte, n)), 4096)
				switch {
				case r.n == 0 && o.noReply:
				case r.n != 0 && r.errno() == syscall.EINVAL:
				default:
					t.Errorf("%s with %d of %d argument bytes: n %d, %v", o.name, n, o.argSize, r.n, r.errno())
				}
			}
		}
		// The legacy RENAME needs its 8 bytes; after them, the names.
		c.wantErr(syscall.EINVAL, opRename, root, make([]byte, 7))
		c.wantErr(syscall.EINVAL, opRename, root, u64(root))
		c.wantErr(syscall.EINVAL, opRename, root, u64(root), cstr("a"))
		// INIT needs its first 16 bytes.
		c2 := newClient(t, lay)
		c2.wantErr(syscall.EINVAL, opInit, 0, args(initIn())[:15])
		if c2.fs.inits != 0 {
			t.Fatal("short INIT reached the FileSystem")
		}
		c.getattr(root)
		c.checkFS()
	})
}

// nameReq builds a request of op that carries name in each name position
// (other positions get a valid name).
type nameOp struct {
	name  string
	op    uint32
	build func(c *client, parent uint64, name []byte) []byte
}

func nameOps() []nameOp {
	return []nameOp{
		{"LOOKUP", opLookup, func(c *client, p uint64, n []byte) []byte { return c.build(opLookup, p, n) }},
		{"MKDIR", opMkdir, func(c *client, p uint64, n []byte) []byte {
			return c.build(opMkdir, p, args(&gofuse.MkdirIn{Mode: 0o755}), n)
		}},
		{"MKNOD", opMknod, func(c *client, p uint64, n []byte) []byte {
			return c.build(opMknod, p, args(&gofuse.MknodIn{Mode: syscall.S_IFREG | 0o644}), n)
		}},
		{"CREATE", opCreate, func(c *client, p uint64, n []byte) []byte {
			return c.build(opCreate, p, args(&gofuse.CreateIn{Flags: syscall.O_RDWR, Mode: 0o644}), n)
		}},
		{"SYMLINK name", opSymlink, func(c *client, p uint64, n []byte) []byte { return c.build(opSymlink, p, n, cstr("target")) }},
		{"LINK", opLink, func(c *client, p uint64, n []byte) []byte {
			return c.build(opLink, p, args(&gofuse.LinkIn{Oldnodeid: c.lookup(p, "file").NodeId}), n)
		}},
		{"UNLINK", opUnlink, func(c *client, p uint64, n []byte) []byte { return c.build(opUnlink, p, n) }},
		{"RMDIR", opRmdir, func(c *client, p uint64, n []byte) []byte { return c.build(opRmdir, p, n) }},
		{"RENAME old", opRename, func(c *client, p uint64, n []byte) []byte { return c.build(opRename, p, u64(p), n, cstr("new")) }},
		{"RENAME new", opRename, func(c *client, p uint64, n []byte) []byte { return c.build(opRename, p, u64(p), cstr("file"), n) }},
		{"RENAME2 old", opRename2, func(c *client, p uint64, n []byte) []byte {
			return c.build(opRename2, p, args(&gofuse.RenameIn{Newdir: p}), n, cstr("new"))
		}},
		{"RENAME2 new", opRename2, func(c *client, p uint64, n []byte) []byte {
			return c.build(opRename2, p, args(&gofuse.RenameIn{Newdir: p}), cstr("file"), n)
		}},
	}
}

func TestHostileNames(t *testing.T) {
	long := strings.Repeat("n", 256)
	bad := []struct {
		desc string
		name []byte
		want syscall.Errno
	}{
		{"no NUL", []byte("abc"), syscall.EINVAL},
		{"empty", cstr(""), syscall.EINVAL},
		{"slash", cstr("a/b"), syscall.EINVAL},
		{"leading slash", cstr("/etc"), syscall.EINVAL},
		{"trailing slash", cstr("a/"), syscall.EINVAL},
		{"only slash", cstr("/"), syscall.EINVAL},
		{"dot", cstr("."), syscall.EINVAL},
		{"dotdot", cstr(".."), syscall.EINVAL},
		{"dotdot slash", cstr("../x"), syscall.EINVAL},
		{"256 bytes", cstr(long), syscall.ENAMETOOLONG},
		{"256 bytes without NUL", []byte(long), syscall.EINVAL},
		{"4096 bytes", cstr(strings.Repeat("m", 4096)), syscall.ENAMETOOLONG},
	}
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for _, op := range nameOps() {
			// A directory per operation, holding "file".
			d := c.mkdir(root, op.name, 0o755)
			f := c.create(d.NodeId, "file", syscall.O_RDWR, 0o644)
			c.release(f.NodeId, f.Fh)
			for _, b := range bad {
				// (A name without NUL followed by another name runs into
				// it, and then the second name has none.)
				r := c.serve(op.build(c, d.NodeId, b.name), 4096)
				if r.n == 0 || r.errno() != b.want {
					t.Errorf("%s with %s name: n %d, %v; want %v", op.name, b.desc, r.n, r.errno(), b.want)
				}
			}
			// 255 bytes is a valid name.
			r := c.serve(op.build(c, d.NodeId, cstr(strings.Repeat("k", 255))), 4096)
			if r.n == 0 || r.errno() == syscall.EINVAL || r.errno() == syscall.ENAMETOOLONG {
				t.Errorf("%s with a 255-byte name: n %d, %v", op.name, r.n, r.errno())
			}
		}
		d := c.mkdir(root, "d", 0o755)
		f := c.create(d.NodeId, "file", syscall.O_RDWR, 0o644)
		c.release(f.NodeId, f.Fh)
		// SYMLINK: a bad target.
		c.wantErr(syscall.EINVAL, opSymlink, d.NodeId, cstr("l"), cstr(""))
		c.wantErr(syscall.EINVAL, opSymlink, d.NodeId, cstr("l"), []byte("no-nul"))
		c.wantErr(syscall.EINVAL, opSymlink, d.NodeId, cstr("l"))
		c.wantErr(syscall.EINVAL, opSymlink, d.NodeId, []byte("l-and-no-nul"))
		c.wantErr(syscall.EINVAL, opSymlink, d.NodeId, cstr("l"), cstr(strings.Repeat("t", 4096)))
		// RENAME with one NUL-terminated name and one not.
		c.wantErr(syscall.EINVAL, opRename2, d.NodeId, args(&gofuse.RenameIn{Newdir: d.NodeId}), cstr("file"), []byte("x"))
		c.wantErr(syscall.EINVAL, opRename2, d.NodeId, args(&gofuse.RenameIn{Newdir: d.NodeId}), cstr("file"))
		// A NUL inside the name ends it.
		e := c.lookup(d.NodeId, "file\x00junk")
		if e.NodeId != f.NodeId {
			t.Fatalf("name with embedded NUL found %d", e.NodeId)
		}
		c.checkFS()
	})
}

func TestHostileExtensions(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		// total_extlen beyond the request.
		for _, ext := range []uint16{1, 2, 100, 0xffff} {
			req := setExtlen(c.build(opLookup, root, []byte("abcdef\x00")), ext)
			if r := c.serve(req, 4096); r.errno() != syscall.EINVAL {
				t.Errorf("LOOKUP of 7 arg bytes with %d extension units: %v", ext, r.errno())
			}
		}
		req := setExtlen(c.build(opGetattr, root, args(&gofuse.GetAttrIn{})), 3)
		if r := c.serve(req, 4096); r.errno() != syscall.EINVAL {
			t.Errorf("GETATTR with 24 of its 16 argument bytes as extension: %v", r.errno())
		}
		// The extension swallows the name's NUL.
		req = setExtlen(c.build(opLookup, root, []byte("abcdefg\x00")), 1)
		if r := c.serve(req, 4096); r.errno() != syscall.EINVAL {
			t.Errorf("LOOKUP whose NUL is in the extension: %v", r.errno())
		}
		// A valid extension after the name is not part of it.
		ext := secCtxExt("ctx", []byte("v")) // 24 bytes
		req = withExt(c.build(opMkdir, root, args(&gofuse.MkdirIn{Mode: 0o755}), cstr("withext")), ext)
		if r := c.serve(req, 4096); r.errno() != 0 {
			t.Fatalf("MKDIR with an extension: %v", r.errno())
		}
		c.lookup(root, "withext")
		// An extension right after a name without NUL.
		req = withExt(c.build(opMkdir, root, args(&gofuse.MkdirIn{Mode: 0o755}), []byte("nonul")), ext)
		if r := c.serve(req, 4096); r.errno() != syscall.EINVAL {
			t.Errorf("MKDIR with a name ending at the extension: %v", r.errno())
		}
		c.checkFS()
	})
}

func TestHostileSmallReplyBuffer(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, pattern(100, 3))
		getattr := func() []byte { return c.build(opGetattr, root, args(&gofuse.GetAttrIn{})) }
		for _, size := range []int{0, 1, 8, 15} {
			out := outSegs(size, lay.out)
			if n := c.w.Serve(split(getattr(), lay.in), out); n != 0 {
				t.Errorf("GETATTR with %d writable bytes: Serve returned %d", size, n)
			}
			if !untouched(out) {
				t.Errorf("GETATTR with %d writable bytes: buffer written", size)
			}
		}
		for _, size := range []int{16, 17, 16 + 103} {
			r := c.serve(getattr(), size)
			if r.n != 16 || r.errno() != syscall.EINVAL {
				t.Errorf("GETATTR with %d writable bytes: n %d, %v", size, r.n, r.errno())
			}
		}
		if r := c.serve(getattr(), 16+104); r.errno() != 0 || len(r.body) != 104 {
			t.Errorf("GETATTR with exactly enough room: %v", r.errno())
		}
		// The header scattered over sixteen 1-byte segments.
		c1 := *c
		c1.lay = layout{in: c.lay.in, out: []int{1}}
		if r := c1.serve(getattr(), 16); r.errno() != syscall.EINVAL {
			t.Errorf("16 one-byte segments: %v", r.errno())
		}
		// Without room for the success reply the request is refused
		// before it runs, even one that would have failed anyway.
		if r := c.serve(c.build(opGetattr, 999, args(&gofuse.GetAttrIn{})), 16); r.errno() != syscall.EINVAL {
			t.Errorf("GETATTR in 16 bytes: %v", r.errno())
		}
		// READ: no room for the header, then only for the header.
		readReq := func() []byte { return c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: 100})) }
		for _, size := range []int{0, 15} {
			out := outSegs(size, lay.out)
			if n := c.w.Serve(split(readReq(), lay.in), out); n != 0 || !untouched(out) {
				t.Errorf("READ with %d writable bytes: Serve returned %d", size, n)
			}
		}
		if r := c.serve(readReq(), 16); r.errno() != 0 || len(r.body) != 0 {
			t.Errorf("READ with room for the header only: %v, %d bytes", r.errno(), len(r.body))
		}
		// Huge sizes are bounded by the room in the reply.
		r := c.serve(c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: 0xffffffff})), 16+50)
		if r.errno() != 0 || !bytes.Equal(r.body, pattern(50, 3)) {
			t.Errorf("READ of 4 GiB into 50 bytes: %v, %d bytes", r.errno(), len(r.body))
		}
		fh := c.opendir(root)
		r = c.serve(c.build(opReaddir, root, args(&gofuse.ReadIn{Fh: fh, Size: 0xffffffff})), 4096)
		if r.errno() != 0 {
			t.Errorf("READDIR of 4 GiB: %v", r.errno())
		}
		c.ok(opSetxattr, f.NodeId, u64(5), cstr("user.x"), []byte("value"))
		r = c.serve(c.build(opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 0xffffffff}), cstr("user.x")), 4096)
		if r.errno() != 0 || string(r.body) != "value" {
			t.Errorf("GETXATTR of 4 GiB: %v %q", r.errno(), r.body)
		}
		r = c.serve(c.build(opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 100}), cstr("user.x")), 16+4)
		if r.errno() != syscall.ERANGE {
			t.Errorf("GETXATTR value larger than the reply buffer: %v", r.errno())
		}
		// READLINK of a long target into a short buffer.
		l := decode[gofuse.EntryOut](t, c.ok(opSymlink, root, cstr("l"), cstr(strings.Repeat("x", 1000))))
		if r := c.serve(c.build(opReadlink, l.NodeId), 16+999); r.errno() != syscall.ENAMETOOLONG {
			t.Errorf("READLINK into a short buffer: %v", r.errno())
		}
	})
}

func TestHostileWrite(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newClientCfg(t, lay, Config{Capabilities: testCaps, MaxPages: 4})
		c.init()
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, []byte("0123456789"))
		before := c.fs.lastWrite
		for _, tc := range []struct {
			desc string
			req  []byte
		}{
			{"Size beyond the data", c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 11}), []byte("abcdefghij"))},
			{"Size 4 GiB", c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 0xffffffff}), []byte("abc"))},
			{"no data", c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 1}))},
			{"Size beyond MaxWrite", c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 4*4096 + 1}), make([]byte, 4*4096+1))},
			{"short WriteIn", c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 0})[:39])},
			// Data beyond Length must not count.
			{"data after Length", setLength(c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 5}), []byte("abcde")), 80+4)},
		} {
			r := c.serve(tc.req, 4096)
			if r.n == 0 || r.errno() != syscall.EINVAL {
				t.Errorf("WRITE, %s: n %d, %v", tc.desc, r.n, r.errno())
			}
		}
		if c.fs.lastWrite != before {
			t.Fatalf("a refused WRITE reached the FileSystem: %+v", c.fs.lastWrite)
		}
		if data, _ := c.fs.contents("f"); string(data) != "0123456789" {
			t.Fatalf("contents %q", data)
		}
		// Exactly MaxWrite is fine; Size smaller than the data present
		// writes Size bytes.
		c.write(f.NodeId, f.Fh, 0, make([]byte, 4*4096))
		r := c.serve(c.build(opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Offset: 1, Size: 2}), []byte("xyz")), 4096)
		if r.errno() != 0 || decode[gofuse.WriteOut](t, r.body).Size != 2 {
			t.Fatalf("WRITE of 2 of 3 bytes present: %v", r.errno())
		}
		if data, _ := c.fs.contents("f"); !bytes.Equal(data[:4], []byte{0, 'x', 'y', 0}) {
			t.Fatalf("contents %q", data[:4])
		}
	})
}

func TestHostileMisc(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		// A request larger than the worker's buffer.
		big := c.build(opLookup, root, bytes.Repeat([]byte("a"), inBufSize))
		if r := c.serve(big, 4096); r.errno() != syscall.E2BIG {
			t.Errorf("oversized LOOKUP: %v", r.errno())
		}
		// Legacy layouts at the end of the worker's buffer: widening them
		// to the current struct would not fit.
		atLimit := func(op uint32, fixed []byte, name string) []byte {
			req := c.build(op, root, fixed, cstr(name))
			return c.build(op, root, fixed, cstr(name), make([]byte, inBufSize-len(req)))
		}
		if r := c.serve(atLimit(opRename, u64(root), "a"), 4096); r.errno() != syscall.EINVAL {
			t.Errorf("RENAME of %d bytes: %v", inBufSize, r.errno())
		}
		if r := c.serve(atLimit(opSetxattr, u64(100), "user.a"), 4096); r.errno() != syscall.EINVAL {
			t.Errorf("SETXATTR of %d bytes: %v", inBufSize, r.errno())
		}
		// BATCH_FORGET claiming more entries than present.
		if r := c.call(opBatchForget, 0, u64(0xffffffff)); r.n != 0 {
			t.Errorf("BATCH_FORGET: replied %d", r.n)
		}
		if r := c.call(opBatchForget, 0, u64(0xffffffff), make([]byte, 15)); r.n != 0 {
			t.Errorf("BATCH_FORGET: replied %d", r.n)
		}
		// FORGET of more lookups than held.
		c.forget(f.NodeId, 1<<63)
		c.wantErr(syscall.EBADF, opGetattr, f.NodeId, args(&gofuse.GetAttrIn{}))
		// SETXATTR: value size beyond the request, name without NUL,
		// empty name.
		c.wantErr(syscall.EINVAL, opSetxattr, root, u64(1000), cstr("user.a"), []byte("short"))
		c.wantErr(syscall.EINVAL, opSetxattr, root, u64(0), []byte("user.nonul"))
		c.wantErr(syscall.ERANGE, opSetxattr, root, u64(0), cstr(""))
		c.wantErr(syscall.ERANGE, opSetxattr, root, u64(0), cstr(strings.Repeat("x", 256)))
		c.wantErr(syscall.EINVAL, opGetxattr, root, args(&gofuse.GetXAttrIn{Size: 10}), []byte("user.nonul"))
		c.wantErr(syscall.EINVAL, opRemovexattr, root, []byte("user.nonul"))
		// Opcodes whose handlers take only the header, with junk.
		c.wantErr(syscall.EBADF, opStatfs, 0, bytes.Repeat([]byte{0xff}, 100))
		c.wantErr(syscall.EBADF, opReadlink, 0xffffffffffffffff)
		// Node id 0 and all-ones everywhere.
		for _, node := range []uint64{0, 0xffffffffffffffff} {
			c.wantErr(syscall.EBADF, opLookup, node, cstr("f"))
			c.wantErr(syscall.EBADF, opMkdir, node, args(&gofuse.MkdirIn{}), cstr("x"))
			c.wantErr(syscall.EBADF, opOpen, node, args(&gofuse.OpenIn{}))
			c.wantErr(syscall.EBADF, opRead, node, args(&gofuse.ReadIn{Fh: 0xffffffffffffffff, Size: 1}))
		}
		c.getattr(root)
		c.checkFS()
	})
}

// TestHostileUndersizedReply sends requests whose reply buffer is smaller
// than the handler needs, down to the out header alone. None may reach the
// FileSystem with less room than its contract promises (memFS panics when
// one does, as passthrough would index an empty buffer) or act without
// being able to answer.
func TestHostileUndersizedReply(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, pattern(100, 3))
		l := decode[gofuse.EntryOut](t, c.ok(opSymlink, root, cstr("l"), cstr("f")))
		c.ok(opSetxattr, f.NodeId, u64(5), cstr("user.x"), []byte("value"))
		c.ok(opSetxattr, l.NodeId, u64(0), cstr("user.empty"))

		// READLINK with no room for a target: refused before the
		// FileSystem sees an empty buffer.
		if r := c.serve(c.build(opReadlink, l.NodeId), outHeaderSize); r.n != uint32(outHeaderSize) || r.errno() != syscall.EINVAL {
			t.Errorf("READLINK with only the out header: n %d, %v; want EINVAL", r.n, r.errno())
		}
		// One byte is room enough for a 1-byte target.
		if r := c.serve(c.build(opReadlink, l.NodeId), outHeaderSize+1); r.errno() != 0 || string(r.body) != "f" {
			t.Errorf("READLINK of a 1-byte target into 1 byte: %v %q", r.errno(), r.body)
		}

		// GETXATTR and LISTXATTR: a size query needs room for
		// GetXAttrOut; a value that cannot fit is ERANGE, an empty one
		// fits anywhere.
		getx := func(node uint64, size uint32, name string) []byte {
			return c.build(opGetxattr, node, args(&gofuse.GetXAttrIn{Size: size}), cstr(name))
		}
		listx := func(node uint64, size uint32) []byte {
			return c.build(opListxattr, node, args(&gofuse.GetXAttrIn{Size: size}))
		}
		for _, tc := range []struct {
			desc string
			req  func() []byte
			room int
			want syscall.Errno
			body string
		}{
			{"GETXATTR of 100 bytes into none", func() []byte { return getx(f.NodeId, 100, "user.x") }, 0, syscall.ERANGE, ""},
			{"GETXATTR of 1 byte into none", func() []byte { return getx(f.NodeId, 1, "user.x") }, 0, syscall.ERANGE, ""},
			{"GETXATTR of an empty value into none", func() []byte { return getx(l.NodeId, 100, "user.empty") }, 0, 0, ""},
			{"GETXATTR of a missing name into none", func() []byte { return getx(f.NodeId, 100, "user.none") }, 0, syscall.ENODATA, ""},
			{"GETXATTR size query into 7 bytes", func() []byte { return getx(f.NodeId, 0, "user.x") }, 7, syscall.EINVAL, ""},
			{"GETXATTR size query into 8 bytes", func() []byte { return getx(f.NodeId, 0, "user.x") }, 8, 0, "\x05\x00\x00\x00\x00\x00\x00\x00"},
			{"LISTXATTR of 64 bytes into none", func() []byte { return listx(f.NodeId, 64) }, 0, syscall.ERANGE, ""},
			{"LISTXATTR of 64 bytes into 3", func() []byte { return listx(f.NodeId, 64) }, 3, syscall.ERANGE, ""},
			{"LISTXATTR size query into 0 bytes", func() []byte { return listx(f.NodeId, 0) }, 0, syscall.EINVAL, ""},
			{"LISTXATTR into exactly enough", func() []byte { return listx(f.NodeId, 64) }, 7, 0, "user.x\x00"},
			// READ and READDIR(PLUS) of nothing, or into nothing, succeed
			// empty.
			{"READ of 0 bytes", func() []byte {
				return c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: 0}))
			}, 4096, 0, ""},
		} {
			r := c.serve(tc.req(), outHeaderSize+tc.room)
			if r.n == 0 || r.errno() != tc.want || string(r.body) != tc.body {
				t.Errorf("%s: n %d, %v %q; want %v %q", tc.desc, r.n, r.errno(), r.body, tc.want, tc.body)
			}
		}
		fh := c.opendir(root)
		for _, op := range []uint32{opReaddir, opReaddirplus} {
			for _, size := range []uint32{0, 1, 23, 24, 31, 32, 151, 4096} {
				for _, room := range []int{0, 1, 23, 31, 4096} {
					r := c.serve(c.build(op, root, args(&gofuse.ReadIn{Fh: fh, Size: size})), outHeaderSize+room)
					if r.n == 0 || r.errno() != 0 || len(r.body) > min(int(size), room) {
						t.Errorf("%s of %d bytes into %d: n %d, %v, %d bytes", OpName(op), size, room, r.n, r.errno(), len(r.body))
					}
					if _, err := parseDirents(r.body, op == opReaddirplus); err != nil {
						t.Errorf("%s of %d bytes into %d: %v", OpName(op), size, room, err)
					}
				}
			}
		}
		c.getattr(root)
		c.checkFS()

		// INIT with room for the 24-byte answer to a newer major but not
		// for the whole InitOut: refused before the session is reset.
		c2 := newClient(t, lay)
		for _, room := range []int{24, 63} {
			if r := c2.serve(c2.build(opInit, 0, args(initIn())), outHeaderSize+room); r.errno() != syscall.EINVAL {
				t.Errorf("INIT with %d bytes of room: %v; want EINVAL", room, r.errno())
			}
		}
		if c2.fs.inits != 0 {
			t.Errorf("an INIT that could not be answered reached the FileSystem (%d times)", c2.fs.inits)
		}
		c2.init()
		c2.getattr(root)
	})
}
