package fuse

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

const root = gofuse.FUSE_ROOT_ID

// pattern returns n bytes that differ at every offset modulo 251.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) ^ seed
	}
	return b
}

func TestInit(t *testing.T) {
	full := initIn()
	tests := []struct {
		name       string
		caps       uint64
		in         *gofuse.InitIn
		short      bool // old 16-byte INIT
		wantErr    syscall.Errno
		wantMinor  uint32
		wantFlags  uint64 // negotiated, flags2 in the upper half
		wantFlags2 uint32 // InitOut.Flags2
		wantInit   bool
	}{
		{
			name: "7.41 with INIT_EXT", caps: testCaps, in: full,
			wantMinor: 41, wantFlags: guestFlags & testCaps, wantFlags2: uint32((guestFlags & testCaps) >> 32), wantInit: true,
		},
		{
			name: "newer minor", caps: testCaps,
			in:        &gofuse.InitIn{Major: 7, Minor: 45, Flags: uint32(gofuse.CAP_ASYNC_READ | gofuse.CAP_FLOCK_LOCKS)},
			wantMinor: 41, wantFlags: gofuse.CAP_ASYNC_READ, wantInit: true,
		},
		{
			name: "oldest accepted minor", caps: testCaps,
			in:        &gofuse.InitIn{Major: 7, Minor: MinMinor, Flags: uint32(gofuse.CAP_READDIRPLUS)},
			wantMinor: MinMinor, wantFlags: gofuse.CAP_READDIRPLUS, wantInit: true,
		},
		{
			name: "flags2 without INIT_EXT is ignored", caps: testCaps,
			in:        &gofuse.InitIn{Major: 7, Minor: 41, Flags: uint32(gofuse.CAP_ASYNC_READ), Flags2: 0xffffffff},
			wantMinor: 41, wantFlags: gofuse.CAP_ASYNC_READ, wantInit: true,
		},
		{
			name: "old 16-byte INIT claiming INIT_EXT", caps: testCaps, short: true,
			in:        &gofuse.InitIn{Major: 7, Minor: 35, Flags: uint32(gofuse.CAP_ASYNC_READ | gofuse.CAP_INIT_EXT)},
			wantMinor: 35, wantFlags: gofuse.CAP_ASYNC_READ | gofuse.CAP_INIT_EXT, wantInit: true,
		},
		{
			name: "one in common", caps: gofuse.CAP_POSIX_LOCKS, in: full,
			wantMinor: 41, wantFlags: gofuse.CAP_POSIX_LOCKS, wantInit: true,
		},
		{
			name: "no capabilities", caps: 0, in: full,
			wantMinor: 41, wantFlags: 0, wantInit: true,
		},
		{name: "minor too old", caps: testCaps, in: &gofuse.InitIn{Major: 7, Minor: MinMinor - 1}, wantErr: syscall.EPROTO},
		{name: "major too old", caps: testCaps, in: &gofuse.InitIn{Major: 6, Minor: 99}, wantErr: syscall.EPROTO},
		{name: "major zero", caps: testCaps, in: &gofuse.InitIn{}, wantErr: syscall.EPROTO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			forLayouts(t, func(t *testing.T, lay layout) {
				c := newClientCfg(t, lay, Config{Capabilities: tc.caps, MaxWrite: 64 << 10, MaxPages: 32})
				a := args(tc.in)
				if tc.short {
					a = a[:16]
				}
				r := c.call(opInit, 0, a)
				if r.n == 0 {
					t.Fatal("no reply")
				}
				if r.errno() != tc.wantErr {
					t.Fatalf("errno %v, want %v", r.errno(), tc.wantErr)
				}
				initialised := c.fs.inits == 1
				if initialised != tc.wantInit {
					t.Fatalf("FileSystem.Init called %d times", c.fs.inits)
				}
				if tc.wantErr != 0 {
					if len(r.body) != 0 {
						t.Fatalf("error reply with a %d-byte body", len(r.body))
					}
					c.wantErr(syscall.EIO, opGetattr, root, args(&gofuse.GetAttrIn{}))
					return
				}
				if len(r.body) != 64 {
					t.Fatalf("INIT reply body %d bytes, want 64", len(r.body))
				}
				out := decode[gofuse.InitOut](t, r.body)
				if out.Major != 7 || out.Minor != tc.wantMinor {
					t.Errorf("version %d.%d, want 7.%d", out.Major, out.Minor, tc.wantMinor)
				}
				if uint64(out.Flags) != tc.wantFlags&0xffffffff || out.Flags2 != tc.wantFlags2 {
					t.Errorf("flags %#x/%#x, want %#x/%#x", out.Flags, out.Flags2, tc.wantFlags&0xffffffff, tc.wantFlags2)
				}
				if got := c.srv.Negotiated(); got != tc.wantFlags {
					t.Errorf("Negotiated() = %#x, want %#x", got, tc.wantFlags)
				}
				if c.fs.lastInit != (InitInfo{Flags: tc.wantFlags, Minor: tc.wantMinor}) {
					t.Errorf("FileSystem.Init got %+v", c.fs.lastInit)
				}
				if out.MaxWrite != 64<<10 || out.MaxPages != 32 || out.TimeGran != 1 || out.MaxReadAhead != tc.in.MaxReadAhead {
					t.Errorf("InitOut %+v", out)
				}
				c.getattr(root)
			})
		})
	}
}

// A guest with a newer major is told ours, and retries.
func TestInitNewerMajor(t *testing.T) {
	c := newClient(t, layouts[1])
	r := c.call(opInit, 0, args(&gofuse.InitIn{Major: 8, Minor: 1, Flags: 0xffffffff}))
	if r.errno() != 0 || len(r.body) != 24 {
		t.Fatalf("errno %v, body %d bytes; want a 24-byte reply", r.errno(), len(r.body))
	}
	out := decode[gofuse.InitOut](t, append(r.body, make([]byte, 64)...))
	if out.Major != KernelMajor || out.Minor != KernelMinor {
		t.Fatalf("told the guest %d.%d", out.Major, out.Minor)
	}
	if c.fs.inits != 0 {
		t.Fatal("FileSystem.Init called before the guest agreed")
	}
	c.wantErr(syscall.EIO, opGetattr, root, args(&gofuse.GetAttrIn{}))
	c.init()
	c.getattr(root)
}

func TestDefaultConfig(t *testing.T) {
	c := newClientCfg(t, layouts[0], Config{Capabilities: testCaps})
	out := c.init()
	if out.MaxPages != 256 || out.MaxWrite != 256*4096 {
		t.Fatalf("defaults: max pages %d, max write %d", out.MaxPages, out.MaxWrite)
	}
}

func TestBeforeInit(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newClient(t, lay)
		for _, tc := range []struct {
			op    uint32
			parts [][]byte
		}{
			{opGetattr, [][]byte{args(&gofuse.GetAttrIn{})}},
			{opLookup, [][]byte{cstr("x")}},
			{opStatfs, nil},
			{opDestroy, nil},
			{opRead, [][]byte{args(&gofuse.ReadIn{Fh: 1, Size: 10})}},
			{opWrite, [][]byte{args(&gofuse.WriteIn{Fh: 1, Size: 3}), []byte("abc")}},
		} {
			c.wantErr(syscall.EIO, tc.op, root, tc.parts...)
		}
		// No-reply requests stay unanswered.
		for _, tc := range []struct {
			op    uint32
			parts [][]byte
		}{
			{opForget, [][]byte{args(&gofuse.ForgetIn{Nlookup: 1})}},
			{opBatchForget, [][]byte{make([]byte, 8)}},
			{opInterrupt, [][]byte{u64(1)}},
		} {
			if r := c.call(tc.op, root, tc.parts...); r.n != 0 {
				t.Errorf("%s before INIT: replied %d bytes", OpName(tc.op), r.n)
			}
		}
		if c.fs.destroys != 0 || c.fs.inits != 0 {
			t.Fatalf("init %d, destroy %d", c.fs.inits, c.fs.destroys)
		}
	})
}

func TestReinitResetsSession(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, []byte("kept"))
		d := c.mkdir(root, "d", 0o755)
		dfh := c.opendir(d.NodeId)

		// A second INIT without DESTROY: the guest rebooted its driver.
		c.init()
		if c.fs.inits != 2 || c.fs.destroys != 1 {
			t.Fatalf("init %d, destroy %d; want 2, 1", c.fs.inits, c.fs.destroys)
		}
		c.wantErr(syscall.EBADF, opGetattr, f.NodeId, args(&gofuse.GetAttrIn{}))
		c.wantErr(syscall.EBADF, opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: 4}))
		c.wantErr(syscall.EBADF, opReaddir, d.NodeId, args(&gofuse.ReadIn{Fh: dfh, Size: 100}))
		if c.fs.handleCount() != 0 {
			t.Fatalf("%d handles survived INIT", c.fs.handleCount())
		}
		// The tree itself is still there.
		e := c.lookup(root, "f")
		if e.NodeId != f.NodeId || e.Size != 4 {
			t.Fatalf("after re-INIT: %+v", e)
		}
		c.checkFS()
	})
}

func TestDestroy(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		e := c.mkdir(root, "d", 0o755)
		if b := c.ok(opDestroy, 0); len(b) != 0 {
			t.Fatalf("DESTROY reply body %d bytes", len(b))
		}
		if c.fs.destroys != 1 {
			t.Fatalf("Destroy called %d times", c.fs.destroys)
		}
		c.wantErr(syscall.EIO, opGetattr, root, args(&gofuse.GetAttrIn{}))
		c.wantErr(syscall.EIO, opDestroy, 0)
		if c.fs.destroys != 1 {
			t.Fatalf("Destroy called %d times", c.fs.destroys)
		}
		// Reset after DESTROY does nothing more.
		c.srv.Reset()
		if c.fs.destroys != 1 {
			t.Fatal("Reset destroyed twice")
		}
		c.init()
		if c.fs.destroys != 1 {
			t.Fatal("INIT after DESTROY destroyed again")
		}
		c.wantErr(syscall.EBADF, opGetattr, e.NodeId, args(&gofuse.GetAttrIn{}))
		c.lookup(root, "d")

		c.srv.Reset()
		if c.fs.destroys != 2 {
			t.Fatal("Reset did not destroy the session")
		}
		c.wantErr(syscall.EIO, opGetattr, root, args(&gofuse.GetAttrIn{}))
	})
}

func TestLookupGetattr(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		d := c.mkdir(root, "dir", 0o750)
		f := c.create(d.NodeId, "file", syscall.O_WRONLY, 0o640)
		c.write(f.NodeId, f.Fh, 0, []byte("hello"))
		c.release(f.NodeId, f.Fh)

		e := c.lookup(d.NodeId, "file")
		if e.NodeId != f.NodeId || e.Ino != f.NodeId || e.Mode != syscall.S_IFREG|0o640 || e.Size != 5 || e.Nlink != 1 {
			t.Fatalf("LOOKUP: %+v", e)
		}
		if e.Uid != testCaller.Uid || e.Gid != testCaller.Gid {
			t.Fatalf("owner %d:%d", e.Uid, e.Gid)
		}
		if got := c.fs.lookups(f.NodeId); got != 2 {
			t.Fatalf("lookup count %d, want 2 (CREATE, LOOKUP)", got)
		}
		a := c.getattr(d.NodeId)
		if a.Mode != syscall.S_IFDIR|0o750 || a.Nlink != 2 || a.Ino != d.NodeId {
			t.Fatalf("GETATTR dir: %+v", a)
		}
		if ra := c.getattr(root); ra.Nlink != 3 || ra.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Fatalf("GETATTR root: %+v", ra)
		}
		if c.fs.lastCtx != testCaller {
			t.Fatalf("caller %+v reached the FileSystem as %+v", testCaller, c.fs.lastCtx)
		}

		// GETATTR by handle.
		fh := c.open(f.NodeId, syscall.O_RDONLY)
		ao := decode[gofuse.AttrOut](t, c.ok(opGetattr, f.NodeId, args(&gofuse.GetAttrIn{Flags_: gofuse.FUSE_GETATTR_FH, Fh_: fh})))
		if ao.Size != 5 || ao.AttrValid != 1 {
			t.Fatalf("GETATTR by handle: %+v", ao)
		}
		c.wantErr(syscall.EBADF, opGetattr, f.NodeId, args(&gofuse.GetAttrIn{Flags_: gofuse.FUSE_GETATTR_FH, Fh_: fh + 100}))

		for _, tc := range []struct {
			parent uint64
			name   string
			want   syscall.Errno
		}{
			{d.NodeId, "missing", syscall.ENOENT},
			{f.NodeId, "x", syscall.ENOTDIR},
			{12345, "file", syscall.EBADF},
			{0, "file", syscall.EBADF},
			{root, "file", syscall.ENOENT},
		} {
			c.wantErr(tc.want, opLookup, tc.parent, cstr(tc.name))
		}
		c.wantErr(syscall.EBADF, opGetattr, 999, args(&gofuse.GetAttrIn{}))
		c.wantErr(syscall.EBADF, opGetattr, 0, args(&gofuse.GetAttrIn{}))
		// A reply body is exactly the out struct.
		if b := c.ok(opLookup, d.NodeId, cstr("file")); len(b) != 128 {
			t.Fatalf("LOOKUP body %d bytes", len(b))
		}
		if b := c.ok(opGetattr, d.NodeId, args(&gofuse.GetAttrIn{})); len(b) != 104 {
			t.Fatalf("GETATTR body %d bytes", len(b))
		}
		c.checkFS()
	})
}

func TestSetattr(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, pattern(100, 1))
		setattr := func(in gofuse.SetAttrIn) gofuse.Attr {
			t.Helper()
			return decode[gofuse.AttrOut](t, c.ok(opSetattr, f.NodeId, args(&in))).Attr
		}
		a := setattr(gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_SIZE, Size: 10}})
		if a.Size != 10 {
			t.Fatalf("truncate: size %d", a.Size)
		}
		a = setattr(gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_SIZE | gofuse.FATTR_FH, Fh: f.Fh, Size: 20}})
		if a.Size != 20 {
			t.Fatalf("extend: size %d", a.Size)
		}
		if data, _ := c.fs.contents("f"); !bytes.Equal(data, append(pattern(10, 1), make([]byte, 10)...)) {
			t.Fatalf("contents after truncate and extend: %x", data)
		}
		a = setattr(gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{
			Valid: gofuse.FATTR_MODE | gofuse.FATTR_UID | gofuse.FATTR_GID | gofuse.FATTR_MTIME | gofuse.FATTR_ATIME,
			Mode:  0o4711, Owner: gofuse.Owner{Uid: 7, Gid: 8}, Mtime: 1234, Mtimensec: 5, Atime: 99,
		}})
		if a.Mode != syscall.S_IFREG|0o4711 || a.Uid != 7 || a.Gid != 8 || a.Mtime != 1234 || a.Mtimensec != 5 || a.Atime != 99 {
			t.Fatalf("SETATTR: %+v", a)
		}
		if got := c.fs.lastSet.NodeId; got != f.NodeId {
			t.Fatalf("SETATTR reached node %d", got)
		}
		c.wantErr(syscall.EBADF, opSetattr, 777, args(&gofuse.SetAttrIn{}))
		c.wantErr(syscall.EBADF, opSetattr, f.NodeId, args(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_FH, Fh: 999}}))
		c.wantErr(syscall.EISDIR, opSetattr, root, args(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_SIZE}}))
	})
}

func TestMkdirMknodSymlink(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		d := c.mkdir(root, "d", 0o2755)
		if d.Mode != syscall.S_IFDIR|0o2755 || d.NodeId == 0 || d.NodeId == root {
			t.Fatalf("MKDIR: %+v", d)
		}
		c.wantErr(syscall.EEXIST, opMkdir, root, args(&gofuse.MkdirIn{Mode: 0o755}), cstr("d"))
		c.wantErr(syscall.EBADF, opMkdir, 4444, args(&gofuse.MkdirIn{Mode: 0o755}), cstr("x"))

		fifo := decode[gofuse.EntryOut](t, c.ok(opMknod, d.NodeId,
			args(&gofuse.MknodIn{Mode: syscall.S_IFIFO | 0o600}), cstr("fifo")))
		if fifo.Mode != syscall.S_IFIFO|0o600 {
			t.Fatalf("MKNOD fifo: %+v", fifo)
		}
		chr := decode[gofuse.EntryOut](t, c.ok(opMknod, d.NodeId,
			args(&gofuse.MknodIn{Mode: syscall.S_IFCHR | 0o644, Rdev: 0x0103, Umask: 0o022}), cstr("null")))
		if chr.Mode != syscall.S_IFCHR|0o644 || chr.Rdev != 0x0103 {
			t.Fatalf("MKNOD chr: %+v", chr)
		}
		c.wantErr(syscall.EINVAL, opMknod, d.NodeId, args(&gofuse.MknodIn{Mode: syscall.S_IFDIR | 0o755}), cstr("dir"))

		target := strings.Repeat("../x/", 100) + "end"
		l := decode[gofuse.EntryOut](t, c.ok(opSymlink, d.NodeId, cstr("link"), cstr(target)))
		if l.Mode != syscall.S_IFLNK|0o777 || l.Size != uint64(len(target)) {
			t.Fatalf("SYMLINK: %+v", l)
		}
		if got := string(c.ok(opReadlink, l.NodeId)); got != target {
			t.Fatalf("READLINK: %q", got)
		}
		long := strings.Repeat("t", 4095)
		l2 := decode[gofuse.EntryOut](t, c.ok(opSymlink, d.NodeId, cstr("long"), cstr(long)))
		if got := string(c.ok(opReadlink, l2.NodeId)); got != long {
			t.Fatalf("READLINK of a 4095-byte target: %d bytes", len(got))
		}
		c.wantErr(syscall.EINVAL, opReadlink, d.NodeId)
		c.wantErr(syscall.EBADF, opReadlink, 5555)
		c.wantErr(syscall.EEXIST, opSymlink, d.NodeId, cstr("link"), cstr("t"))

		ents := c.readdir(d.NodeId, c.opendir(d.NodeId), 0, 4096, false)
		var names []string
		for _, e := range ents {
			names = append(names, fmt.Sprintf("%s:%d", e.name, e.typ))
		}
		want := []string{".:4", "..:4", "fifo:1", "null:2", "link:10", "long:10"}
		if !slices.Equal(names, want) {
			t.Fatalf("listing %v, want %v", names, want)
		}
		c.checkFS()
	})
}

func TestFileIO(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "data", syscall.O_RDWR|syscall.O_CREAT, 0o600)
		if f.Fh == 0 || f.NodeId == 0 || f.Mode != syscall.S_IFREG|0o600 {
			t.Fatalf("CREATE: %+v", f)
		}
		// A write whose data crosses many segment boundaries, and a
		// second one overlapping its end.
		data := pattern(10000, 0x3c)
		if n := c.write(f.NodeId, f.Fh, 0, data); n != 10000 {
			t.Fatalf("WRITE returned %d", n)
		}
		if c.fs.lastWrite.Size != 10000 || c.fs.lastWrite.Fh != f.Fh || c.fs.lastWrite.NodeId != f.NodeId {
			t.Fatalf("WriteIn %+v", c.fs.lastWrite)
		}
		tail := pattern(5000, 0x77)
		if n := c.write(f.NodeId, f.Fh, 8000, tail); n != 5000 {
			t.Fatalf("WRITE returned %d", n)
		}
		want := append(data[:8000:8000], tail...)
		got, e := c.read(f.NodeId, f.Fh, 0, 13000)
		if e != 0 || !bytes.Equal(got, want) {
			t.Fatalf("READ whole: %v, %d bytes, equal %v", e, len(got), bytes.Equal(got, want))
		}
		// A read larger than the file returns what there is.
		got, e = c.read(f.NodeId, f.Fh, 12000, 8192)
		if e != 0 || !bytes.Equal(got, want[12000:]) {
			t.Fatalf("READ past EOF: %v, %d bytes", e, len(got))
		}
		got, e = c.read(f.NodeId, f.Fh, 1<<40, 100)
		if e != 0 || len(got) != 0 {
			t.Fatalf("READ at 1 TiB: %v, %d bytes", e, len(got))
		}
		got, e = c.read(f.NodeId, f.Fh, 17, 0)
		if e != 0 || len(got) != 0 {
			t.Fatalf("READ of 0 bytes: %v, %d bytes", e, len(got))
		}
		// With less room in the reply than asked, the read is short.
		r := c.serve(c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Offset: 3, Size: 4096})), outHeaderSize+1000)
		if r.errno() != 0 || !bytes.Equal(r.body, want[3:1003]) {
			t.Fatalf("READ into a short buffer: %v, %d bytes", r.errno(), len(r.body))
		}
		if c.fs.lastRead.Size != 4096 || c.fs.lastRead.Offset != 3 {
			t.Fatalf("ReadIn %+v", c.fs.lastRead)
		}
		if a := c.getattr(f.NodeId); a.Size != 13000 {
			t.Fatalf("size %d", a.Size)
		}

		// OPEN read-only: writes are refused by the FileSystem.
		ro := c.open(f.NodeId, syscall.O_RDONLY)
		if ro == f.Fh {
			t.Fatal("OPEN reused a live handle")
		}
		c.wantErr(syscall.EBADF, opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: ro, Size: 1}), []byte("x"))
		got, _ = c.read(f.NodeId, ro, 0, 5)
		if !bytes.Equal(got, want[:5]) {
			t.Fatalf("READ via the second handle: %x", got)
		}
		c.wantErr(syscall.EISDIR, opOpen, root, args(&gofuse.OpenIn{}))
		c.wantErr(syscall.EBADF, opOpen, 31337, args(&gofuse.OpenIn{}))

		c.release(f.NodeId, f.Fh)
		c.wantErr(syscall.EBADF, opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: 1}))
		c.wantErr(syscall.EBADF, opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 1}), []byte("x"))
		// RELEASE of an unknown handle is harmless.
		c.release(f.NodeId, 4242)

		// CREATE of an existing file opens it; with O_EXCL it fails; O_TRUNC empties it.
		c.wantErr(syscall.EEXIST, opCreate, root, args(&gofuse.CreateIn{Flags: syscall.O_CREAT | syscall.O_EXCL | syscall.O_RDWR}), cstr("data"))
		again := c.create(root, "data", syscall.O_RDWR|syscall.O_TRUNC, 0o600)
		if again.NodeId != f.NodeId || again.Size != 0 {
			t.Fatalf("CREATE O_TRUNC of an existing file: %+v", again)
		}
		c.release(f.NodeId, again.Fh)
		c.release(f.NodeId, ro)
		if c.fs.handleCount() != 0 {
			t.Fatalf("%d handles left", c.fs.handleCount())
		}
	})
}

// A large write and read at page-sized segments, up to MaxWrite and MaxPages.
func TestLargeIO(t *testing.T) {
	c := newClientCfg(t, layouts[3], Config{Capabilities: testCaps, MaxPages: 64})
	c.init()
	f := c.create(root, "big", syscall.O_RDWR, 0o600)
	data := pattern(256<<10, 9)
	if n := c.write(f.NodeId, f.Fh, 0, data); n != uint32(len(data)) {
		t.Fatalf("WRITE %d", n)
	}
	// MaxWrite is MaxPages pages: one byte more is refused.
	c.wantErr(syscall.EINVAL, opWrite, f.NodeId, args(&gofuse.WriteIn{Fh: f.Fh, Size: 256<<10 + 1}), pattern(256<<10+1, 0))
	// READ is bounded by MaxPages even with more room.
	r := c.serve(c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Size: 1 << 20})), 1<<20+outHeaderSize)
	if r.errno() != 0 || !bytes.Equal(r.body, data) {
		t.Fatalf("READ: %v, %d bytes", r.errno(), len(r.body))
	}
}

func TestUnlinkRmdir(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		d := c.mkdir(root, "d", 0o755)
		f := c.create(d.NodeId, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, []byte("still open"))
		sub := c.mkdir(d.NodeId, "sub", 0o755)

		c.wantErr(syscall.ENOTEMPTY, opRmdir, root, cstr("d"))
		c.wantErr(syscall.ENOTDIR, opRmdir, d.NodeId, cstr("f"))
		c.wantErr(syscall.EISDIR, opUnlink, d.NodeId, cstr("sub"))
		c.wantErr(syscall.ENOENT, opUnlink, d.NodeId, cstr("nope"))
		c.wantErr(syscall.ENOENT, opRmdir, d.NodeId, cstr("nope"))
		c.wantErr(syscall.EBADF, opUnlink, 8888, cstr("f"))

		c.ok(opUnlink, d.NodeId, cstr("f"))
		c.wantErr(syscall.ENOENT, opLookup, d.NodeId, cstr("f"))
		// The guest still holds the node and its handle.
		if a := c.getattr(f.NodeId); a.Nlink != 0 {
			t.Fatalf("unlinked file nlink %d", a.Nlink)
		}
		got, _ := c.read(f.NodeId, f.Fh, 0, 100)
		if string(got) != "still open" {
			t.Fatalf("READ of an unlinked open file: %q", got)
		}
		c.ok(opRmdir, d.NodeId, cstr("sub"))
		if a := c.getattr(d.NodeId); a.Nlink != 2 {
			t.Fatalf("dir nlink %d after RMDIR", a.Nlink)
		}
		c.ok(opRmdir, root, cstr("d"))
		c.wantErr(syscall.ENOENT, opLookup, root, cstr("d"))
		c.forget(sub.NodeId, 1)
		c.wantErr(syscall.EBADF, opGetattr, sub.NodeId, args(&gofuse.GetAttrIn{}))
		c.checkFS()
	})
}

func TestRename(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		a := c.mkdir(root, "a", 0o755)
		b := c.mkdir(root, "b", 0o755)
		f := c.create(a.NodeId, "f", syscall.O_RDWR, 0o644)
		g := c.create(b.NodeId, "g", syscall.O_RDWR, 0o644)

		// Leave RENAME2 flags in the worker's buffer where the legacy
		// RENAME's widened flags go: they must not leak into it.
		c.wantErr(syscall.ENOENT, opRename2, a.NodeId,
			args(&gofuse.RenameIn{Newdir: b.NodeId, Flags: renameExchange}), cstr("nonexistent"), cstr("g"))

		// Legacy RENAME: an 8-byte newdir, then the two names.
		c.ok(opRename, a.NodeId, u64(b.NodeId), cstr("f"), cstr("g"))
		if c.fs.lastRename.Newdir != b.NodeId || c.fs.lastRename.Flags != 0 || c.fs.lastRename.NodeId != a.NodeId {
			t.Fatalf("RENAME reached the FileSystem as %+v", c.fs.lastRename)
		}
		if e := c.lookup(b.NodeId, "g"); e.NodeId != f.NodeId {
			t.Fatalf("b/g is %d, want %d (replaced)", e.NodeId, f.NodeId)
		}
		c.wantErr(syscall.ENOENT, opLookup, a.NodeId, cstr("f"))
		if a := c.getattr(g.NodeId); a.Nlink != 0 {
			t.Fatalf("replaced file nlink %d", a.Nlink)
		}
		// Legacy RENAME with a short name pair.
		c.ok(opRename, b.NodeId, u64(b.NodeId), cstr("g"), cstr("h"))
		c.lookup(b.NodeId, "h")

		// RENAME2 with flags.
		c.create(a.NodeId, "x", syscall.O_RDWR, 0o644)
		c.wantErr(syscall.EEXIST, opRename2, b.NodeId,
			args(&gofuse.RenameIn{Newdir: a.NodeId, Flags: renameNoreplace}), cstr("h"), cstr("x"))
		if c.fs.lastRename.Flags != renameNoreplace {
			t.Fatalf("flags %#x", c.fs.lastRename.Flags)
		}
		c.ok(opRename2, b.NodeId, args(&gofuse.RenameIn{Newdir: a.NodeId, Flags: renameNoreplace}), cstr("h"), cstr("y"))
		c.ok(opRename2, a.NodeId, args(&gofuse.RenameIn{Newdir: a.NodeId, Flags: renameExchange}), cstr("x"), cstr("y"))
		if e := c.lookup(a.NodeId, "x"); e.NodeId != f.NodeId {
			t.Fatalf("after EXCHANGE a/x is %d, want %d", e.NodeId, f.NodeId)
		}
		c.wantErr(syscall.ENOENT, opRename2, a.NodeId,
			args(&gofuse.RenameIn{Newdir: b.NodeId, Flags: renameExchange}), cstr("x"), cstr("missing"))
		c.wantErr(syscall.EINVAL, opRename2, a.NodeId,
			args(&gofuse.RenameIn{Newdir: b.NodeId, Flags: renameWhiteout}), cstr("x"), cstr("w"))
		// A directory into itself.
		c.wantErr(syscall.EINVAL, opRename2, root, args(&gofuse.RenameIn{Newdir: a.NodeId}), cstr("a"), cstr("inside"))
		// Directory moves keep link counts right.
		c.ok(opRename2, root, args(&gofuse.RenameIn{Newdir: b.NodeId}), cstr("a"), cstr("a2"))
		if got := c.getattr(b.NodeId).Nlink; got != 3 {
			t.Fatalf("b nlink %d after moving a into it", got)
		}
		c.wantErr(syscall.EBADF, opRename2, root, args(&gofuse.RenameIn{Newdir: 9999}), cstr("b"), cstr("c"))
		c.wantErr(syscall.EBADF, opRename, 9999, u64(root), cstr("b"), cstr("c"))
		c.checkFS()
	})
}

func TestLink(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		d := c.mkdir(root, "d", 0o755)
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		e := decode[gofuse.EntryOut](t, c.ok(opLink, d.NodeId, args(&gofuse.LinkIn{Oldnodeid: f.NodeId}), cstr("hard")))
		if e.NodeId != f.NodeId || e.Nlink != 2 {
			t.Fatalf("LINK: %+v", e)
		}
		if got := c.fs.lookups(f.NodeId); got != 2 {
			t.Fatalf("lookups %d after CREATE and LINK", got)
		}
		c.wantErr(syscall.EPERM, opLink, root, args(&gofuse.LinkIn{Oldnodeid: d.NodeId}), cstr("dirlink"))
		c.wantErr(syscall.EEXIST, opLink, root, args(&gofuse.LinkIn{Oldnodeid: f.NodeId}), cstr("d"))
		c.wantErr(syscall.EBADF, opLink, root, args(&gofuse.LinkIn{Oldnodeid: 777}), cstr("x"))
		c.ok(opUnlink, root, cstr("f"))
		if a := c.getattr(f.NodeId); a.Nlink != 1 {
			t.Fatalf("nlink %d", a.Nlink)
		}
		c.checkFS()
	})
}

// readAll lists a directory in chunks of size bytes, resuming at the
// cookie of the last entry of each chunk, and checks that every chunk was
// filled as far as the next entry allowed.
func readAll(c *client, dir, fh uint64, size uint32, plus bool) []dirent {
	c.t.Helper()
	var all []dirent
	off := uint64(0)
	for i := 0; ; i++ {
		if i > 1000 {
			c.t.Fatal("listing does not end")
		}
		ents := c.readdir(dir, fh, off, size, plus)
		if len(ents) == 0 {
			return all
		}
		used := 0
		for _, e := range ents {
			used += direntLen(len(e.name), plus)
		}
		// Look ahead: the next entry must not have fitted.
		next := c.readdir(dir, fh, ents[len(ents)-1].off, 1<<16, plus)
		if len(next) > 0 && used+direntLen(len(next[0].name), plus) <= int(size) {
			c.t.Fatalf("chunk of %d bytes stopped before %q (%d bytes) that fits in %d", used, next[0].name, direntLen(len(next[0].name), plus), size)
		}
		if plus {
			// Forget the look-ahead's lookups.
			for _, e := range next {
				if e.entry.NodeId != 0 {
					c.forget(e.entry.NodeId, 1)
				}
			}
		}
		all = append(all, ents...)
		off = ents[len(ents)-1].off
	}
}

func TestReaddir(t *testing.T) {
	for _, plus := range []bool{false, true} {
		t.Run(fmt.Sprintf("plus=%v", plus), func(t *testing.T) {
			forLayouts(t, func(t *testing.T, lay layout) {
				c := newSession(t, lay)
				d := c.mkdir(root, "d", 0o755)
				var want []string
				for i := 1; i <= 40; i++ {
					// Names of 1 to 40 bytes hit every padding.
					name := strings.Repeat(string(rune('a'+i%26)), i)
					if i%3 == 0 {
						c.mkdir(d.NodeId, name, 0o755)
					} else {
						f := c.create(d.NodeId, name, syscall.O_RDWR, 0o644)
						c.release(f.NodeId, f.Fh)
					}
					want = append(want, name)
				}
				max255 := strings.Repeat("z", 255)
				c.mkdir(d.NodeId, max255, 0o700)
				want = append(want, max255)
				fh := c.opendir(d.NodeId)
				before := map[uint64]uint64{}
				for _, name := range want {
					e := c.lookup(d.NodeId, name)
					c.forget(e.NodeId, 1)
					before[e.NodeId] = c.fs.lookups(e.NodeId)
				}

				for _, size := range []uint32{uint32(direntLen(255, plus)), uint32(direntLen(255, plus)) + 77, 1000, 4096} {
					ents := readAll(c, d.NodeId, fh, size, plus)
					var names []string
					for _, e := range ents {
						names = append(names, e.name)
						wantTyp := uint32(syscall.S_IFREG >> 12)
						if e.name == "." || e.name == ".." || len(e.name)%3 == 0 || e.name == max255 {
							wantTyp = syscall.S_IFDIR >> 12
						}
						if e.typ != wantTyp {
							t.Fatalf("%q: type %d, want %d", e.name, e.typ, wantTyp)
						}
						if !plus {
							continue
						}
						switch e.name {
						case ".", "..":
							if e.entry.NodeId != 0 {
								t.Fatalf("%q carries node %d", e.name, e.entry.NodeId)
							}
						default:
							if e.entry.NodeId != e.ino || e.entry.Ino != e.ino || e.entry.Mode>>12 != e.typ {
								t.Fatalf("%q: entry %+v for ino %d", e.name, e.entry, e.ino)
							}
							if got := c.fs.lookups(e.ino); got != before[e.ino]+1 {
								t.Fatalf("%q: %d lookups after READDIRPLUS, want %d", e.name, got, before[e.ino]+1)
							}
							c.forget(e.ino, 1)
						}
					}
					if !slices.Equal(names, append([]string{".", ".."}, want...)) {
						t.Fatalf("size %d: listing %q", size, names)
					}
				}

				// A buffer too small for any entry gets an empty reply.
				if ents := c.readdir(d.NodeId, fh, 0, 31, plus); len(ents) != 0 {
					t.Fatalf("31-byte buffer: %d entries", len(ents))
				}
				// Resuming at the last cookie gives nothing more.
				all := readAll(c, d.NodeId, fh, 1<<16, plus)
				if ents := c.readdir(d.NodeId, fh, all[len(all)-1].off, 4096, plus); len(ents) != 0 {
					t.Fatalf("after the end: %d entries", len(ents))
				}
				if plus {
					for _, e := range all[2:] {
						c.forget(e.ino, 1)
					}
				}
				// Entries removed between chunks are skipped, the rest resume.
				first := c.readdir(d.NodeId, fh, 0, uint32(direntLen(1, plus)*2+direntLen(1, plus)), plus)
				if len(first) != 3 || first[2].name != want[0] {
					t.Fatalf("first chunk %v", first)
				}
				c.ok(opUnlink, d.NodeId, cstr(want[1]))
				rest := c.readdir(d.NodeId, fh, first[2].off, 1<<16, plus)
				if rest[0].name != want[2] {
					t.Fatalf("resumed at %q, want %q", rest[0].name, want[2])
				}

				c.wantErr(syscall.EBADF, opReaddir, d.NodeId, args(&gofuse.ReadIn{Fh: fh + 99, Size: 100}))
				c.wantErr(syscall.ENOTDIR, opOpendir, c.lookup(d.NodeId, want[0]).NodeId, args(&gofuse.OpenIn{}))
				c.ok(opFsyncdir, d.NodeId, args(&gofuse.FsyncIn{Fh: fh}))
				c.ok(opReleasedir, d.NodeId, args(&gofuse.ReleaseIn{Fh: fh}))
				c.wantErr(syscall.EBADF, opReaddirplus, d.NodeId, args(&gofuse.ReadIn{Fh: fh, Size: 100}))
				c.wantErr(syscall.EBADF, opFsyncdir, d.NodeId, args(&gofuse.FsyncIn{Fh: fh}))
				c.checkFS()
			})
		})
	}
}

func TestDirList(t *testing.T) {
	for _, plus := range []bool{false, true} {
		var d DirList
		buf := make([]byte, 200)
		for i := range buf {
			buf[i] = 0xff
		}
		d.reset(buf, plus)
		if d.Len() != 0 || d.Plus != plus {
			t.Fatal("reset")
		}
		n := 0
		for i := 0; ; i++ {
			name := []byte(strings.Repeat("n", i+1))
			fits := d.Fits(len(name))
			eo, ok := d.Add(name, uint64(i+10), uint64(i+1), 8)
			if ok != fits {
				t.Fatalf("Fits %v, Add %v", fits, ok)
			}
			if !ok {
				if d.Len() != n {
					t.Fatal("a refused Add changed Len")
				}
				break
			}
			if (eo != nil) != plus {
				t.Fatalf("plus %v: EntryOut %v", plus, eo)
			}
			if plus {
				if *eo != (gofuse.EntryOut{}) {
					t.Fatal("EntryOut not zeroed")
				}
				eo.NodeId = uint64(i + 10)
			}
			n += direntLen(len(name), plus)
			if d.Len() != n {
				t.Fatalf("Len %d, want %d", d.Len(), n)
			}
		}
		ents, err := parseDirents(buf[:d.Len()], plus)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range ents {
			if e.ino != uint64(i+10) || e.off != uint64(i+1) || e.typ != 8 || len(e.name) != i+1 {
				t.Fatalf("entry %d: %+v", i, e)
			}
			if plus && e.entry.NodeId != e.ino {
				t.Fatalf("entry %d: node %d", i, e.entry.NodeId)
			}
		}
		for _, b := range buf[d.Len():] {
			if b != 0xff {
				t.Fatal("Add wrote past its entries")
			}
		}
	}
}

func TestMiscOps(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		f := c.create(root, "f", syscall.O_RDWR, 0o640)
		c.write(f.NodeId, f.Fh, 0, pattern(1000, 2))

		st := decode[gofuse.StatfsOut](t, c.ok(opStatfs, root))
		if st.Blocks != 1000 || st.Bsize != memBlockSize || st.NameLen != MaxNameLen {
			t.Fatalf("STATFS: %+v", st)
		}
		c.wantErr(syscall.EBADF, opStatfs, 4321)

		c.ok(opFsync, f.NodeId, args(&gofuse.FsyncIn{Fh: f.Fh, FsyncFlags: 1}))
		c.ok(opFlush, f.NodeId, args(&gofuse.FlushIn{Fh: f.Fh, LockOwner: 77}))
		if c.fs.fsyncs != 1 || c.fs.flushes != 1 {
			t.Fatalf("fsync %d flush %d", c.fs.fsyncs, c.fs.flushes)
		}
		c.wantErr(syscall.EBADF, opFsync, f.NodeId, args(&gofuse.FsyncIn{Fh: 999}))
		c.wantErr(syscall.EBADF, opFlush, f.NodeId, args(&gofuse.FlushIn{Fh: 999}))

		c.ok(opSyncfs, root, u64(0))
		if c.fs.syncfs != 1 {
			t.Fatal("SYNCFS did not reach the FileSystem")
		}

		c.ok(opAccess, f.NodeId, args(&gofuse.AccessIn{Mask: gofuse.R_OK | gofuse.W_OK}))
		c.wantErr(syscall.EACCES, opAccess, f.NodeId, args(&gofuse.AccessIn{Mask: gofuse.X_OK}))
		c.wantErr(syscall.EBADF, opAccess, 5678, args(&gofuse.AccessIn{}))

		// FALLOCATE: extend, keep size, punch a hole.
		c.ok(opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Offset: 1500, Length: 500}))
		if a := c.getattr(f.NodeId); a.Size != 2000 {
			t.Fatalf("size %d after FALLOCATE", a.Size)
		}
		c.ok(opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Offset: 0, Length: 1 << 20, Mode: fallocKeepSize}))
		if a := c.getattr(f.NodeId); a.Size != 2000 {
			t.Fatalf("size %d after FALLOCATE KEEP_SIZE", a.Size)
		}
		c.ok(opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Offset: 10, Length: 10, Mode: fallocKeepSize | fallocPunchHole}))
		got, _ := c.read(f.NodeId, f.Fh, 0, 30)
		if !bytes.Equal(got, append(append(pattern(10, 2), make([]byte, 10)...), pattern(30, 2)[20:]...)) {
			t.Fatalf("after punching a hole: %x", got)
		}
		c.wantErr(syscall.EOPNOTSUPP, opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Length: 1, Mode: 0x40}))
		c.wantErr(syscall.EBADF, opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: 12, Length: 1}))

		// LSEEK.
		for _, tc := range []struct {
			off    uint64
			whence uint32
			want   uint64
			err    syscall.Errno
		}{
			{100, seekData, 100, 0},
			{100, seekHole, 2000, 0},
			{2000, seekData, 0, syscall.ENXIO},
			{5, 0, 5, 0},
			{5, 2, 2005, 0},
			{0, 9, 0, syscall.EINVAL},
		} {
			r := c.call(opLseek, f.NodeId, args(&gofuse.LseekIn{Fh: f.Fh, Offset: tc.off, Whence: tc.whence}))
			if r.errno() != tc.err {
				t.Fatalf("LSEEK %d/%d: %v, want %v", tc.off, tc.whence, r.errno(), tc.err)
			}
			if tc.err == 0 {
				if o := decode[gofuse.LseekOut](t, r.body); o.Offset != tc.want || len(r.body) != 8 {
					t.Fatalf("LSEEK %d/%d: %d, want %d", tc.off, tc.whence, o.Offset, tc.want)
				}
			}
		}

		// COPY_FILE_RANGE.
		g := c.create(root, "g", syscall.O_RDWR, 0o640)
		body := c.ok(opCopyFileRange, f.NodeId, args(&gofuse.CopyFileRangeIn{
			FhIn: f.Fh, OffIn: 20, NodeIdOut: g.NodeId, FhOut: g.Fh, OffOut: 5, Len: 100,
		}))
		if o := decode[gofuse.WriteOut](t, body); o.Size != 100 || len(body) != 8 {
			t.Fatalf("COPY_FILE_RANGE copied %d", o.Size)
		}
		gd, _ := c.fs.contents("g")
		fd, _ := c.fs.contents("f")
		if !bytes.Equal(gd, append(make([]byte, 5), fd[20:120]...)) {
			t.Fatal("COPY_FILE_RANGE copied the wrong bytes")
		}
		// Past the end of the source: 0 bytes.
		body = c.ok(opCopyFileRange, f.NodeId, args(&gofuse.CopyFileRangeIn{
			FhIn: f.Fh, OffIn: 1 << 30, NodeIdOut: g.NodeId, FhOut: g.Fh, Len: 100,
		}))
		if o := decode[gofuse.WriteOut](t, body); o.Size != 0 {
			t.Fatalf("COPY_FILE_RANGE past EOF copied %d", o.Size)
		}
		c.wantErr(syscall.EBADF, opCopyFileRange, f.NodeId, args(&gofuse.CopyFileRangeIn{FhIn: f.Fh, NodeIdOut: g.NodeId, FhOut: 99, Len: 1}))
		// A destination handle of another node than NodeIdOut.
		c.wantErr(syscall.EBADF, opCopyFileRange, f.NodeId, args(&gofuse.CopyFileRangeIn{FhIn: f.Fh, NodeIdOut: f.NodeId, FhOut: g.Fh, Len: 1}))
	})
}

func TestXattr(t *testing.T) {
	for _, ext := range []bool{false, true} {
		t.Run(fmt.Sprintf("setxattr_ext=%v", ext), func(t *testing.T) {
			forLayouts(t, func(t *testing.T, lay layout) {
				caps := uint64(testCaps)
				if ext {
					caps |= gofuse.CAP_SETXATTR_EXT
				}
				c := newClientCfg(t, lay, Config{Capabilities: caps})
				in := initIn()
				in.Flags |= gofuse.CAP_SETXATTR_EXT
				c.ok(opInit, 0, args(in))
				f := c.create(root, "f", syscall.O_RDWR, 0o640)
				setx := func(name string, value []byte, flags uint32) reply {
					t.Helper()
					fixed := u64(uint64(len(value)) | uint64(flags)<<32) // size, flags
					if ext {
						fixed = append(fixed, make([]byte, 8)...) // setxattr_flags, padding
					}
					return c.call(opSetxattr, f.NodeId, fixed, cstr(name), value)
				}
				value := pattern(3000, 5)
				if r := setx("user.big", value, 0); r.errno() != 0 {
					t.Fatalf("SETXATTR: %v", r.errno())
				}
				if r := setx("user.empty", nil, 0); r.errno() != 0 {
					t.Fatalf("SETXATTR of an empty value: %v", r.errno())
				}
				if r := setx("user.big", []byte("x"), xattrCreate); r.errno() != syscall.EEXIST {
					t.Fatalf("SETXATTR XATTR_CREATE of an existing name: %v", r.errno())
				}
				if r := setx("user.none", []byte("x"), xattrReplace); r.errno() != syscall.ENODATA {
					t.Fatalf("SETXATTR XATTR_REPLACE of a missing name: %v", r.errno())
				}

				// Size query.
				body := c.ok(opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 0}), cstr("user.big"))
				if o := decode[gofuse.GetXAttrOut](t, body); o.Size != 3000 || len(body) != 8 {
					t.Fatalf("GETXATTR size query: %d (%d-byte body)", o.Size, len(body))
				}
				// Value.
				body = c.ok(opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 4000}), cstr("user.big"))
				if !bytes.Equal(body, value) {
					t.Fatalf("GETXATTR value: %d bytes", len(body))
				}
				if body = c.ok(opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 10}), cstr("user.empty")); len(body) != 0 {
					t.Fatalf("empty value: %d bytes", len(body))
				}
				c.wantErr(syscall.ERANGE, opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 2999}), cstr("user.big"))
				c.wantErr(syscall.ENODATA, opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 0}), cstr("user.none"))
				c.wantErr(syscall.ERANGE, opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 10}), cstr(""))
				c.wantErr(syscall.ERANGE, opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 10}), cstr(strings.Repeat("u", 256)))
				c.wantErr(syscall.EBADF, opGetxattr, 3131, args(&gofuse.GetXAttrIn{Size: 10}), cstr("user.big"))

				body = c.ok(opListxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 0}))
				list := "user.big\x00user.empty\x00"
				if o := decode[gofuse.GetXAttrOut](t, body); o.Size != uint32(len(list)) {
					t.Fatalf("LISTXATTR size %d", o.Size)
				}
				if body = c.ok(opListxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 100})); string(body) != list {
					t.Fatalf("LISTXATTR %q", body)
				}
				c.wantErr(syscall.ERANGE, opListxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 5}))

				c.ok(opRemovexattr, f.NodeId, cstr("user.big"))
				c.wantErr(syscall.ENODATA, opRemovexattr, f.NodeId, cstr("user.big"))
				c.wantErr(syscall.ERANGE, opRemovexattr, f.NodeId, cstr(""))
				// Fixed arguments shorter than the negotiated layout.
				c.wantErr(syscall.EINVAL, opSetxattr, f.NodeId, u64(0))
				// A value larger than the request holds.
				fixed := u64(100)
				if ext {
					fixed = append(fixed, make([]byte, 8)...)
				}
				c.wantErr(syscall.EINVAL, opSetxattr, f.NodeId, fixed, cstr("user.short"), []byte("only this"))
				// The largest value, 64 KiB.
				huge := pattern(64<<10, 7)
				if r := setx("user.huge", huge, 0); r.errno() != 0 {
					t.Fatalf("SETXATTR 64 KiB: %v", r.errno())
				}
				r := c.serve(c.build(opGetxattr, f.NodeId, args(&gofuse.GetXAttrIn{Size: 64 << 10}), cstr("user.huge")), outHeaderSize+64<<10)
				if r.errno() != 0 || !bytes.Equal(r.body, huge) {
					t.Fatalf("GETXATTR 64 KiB: %v, %d bytes", r.errno(), len(r.body))
				}
				if r := setx("user.toobig", pattern(64<<10+1, 7), 0); r.errno() != syscall.EINVAL {
					t.Fatalf("SETXATTR of 64 KiB + 1: %v", r.errno())
				}
			})
		})
	}
}

func TestForget(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		d := c.mkdir(root, "d", 0o755)
		f := c.create(root, "f", syscall.O_RDWR, 0o640)
		c.release(f.NodeId, f.Fh)
		for range 3 {
			c.lookup(root, "d")
		}
		if got := c.fs.lookups(d.NodeId); got != 4 {
			t.Fatalf("lookups %d, want 4", got)
		}
		c.forget(d.NodeId, 3)
		if got := c.fs.lookups(d.NodeId); got != 1 {
			t.Fatalf("lookups %d, want 1", got)
		}
		c.forget(d.NodeId, 1)
		c.wantErr(syscall.EBADF, opGetattr, d.NodeId, args(&gofuse.GetAttrIn{}))
		// Forgetting an unknown node or the root is harmless.
		c.forget(d.NodeId, 1)
		c.forget(98765, 1)
		c.forget(root, 100)
		c.getattr(root)

		// BATCH_FORGET: count, padding, then (node, nlookup) pairs.
		d = c.lookup(root, "d")
		c.lookup(root, "d")
		fe := c.lookup(root, "f")
		batch := func(count uint32, pairs ...uint64) []byte {
			b := u64(uint64(count))
			for _, p := range pairs {
				b = append(b, u64(p)...)
			}
			return b
		}
		if r := c.call(opBatchForget, 0, batch(2, d.NodeId, 1, fe.NodeId, 1)); r.n != 0 {
			t.Fatalf("BATCH_FORGET replied %d bytes", r.n)
		}
		if c.fs.lookups(d.NodeId) != 1 || c.fs.lookups(fe.NodeId) != 1 {
			t.Fatalf("lookups %d, %d after BATCH_FORGET", c.fs.lookups(d.NodeId), c.fs.lookups(fe.NodeId))
		}
		// A count larger than the entries present: only those present.
		if r := c.call(opBatchForget, 0, batch(1000, d.NodeId, 1, fe.NodeId)); r.n != 0 {
			t.Fatalf("BATCH_FORGET replied %d bytes", r.n)
		}
		if c.fs.lookups(d.NodeId) != 0 || c.fs.lookups(fe.NodeId) != 1 {
			t.Fatalf("lookups %d, %d after a truncated BATCH_FORGET", c.fs.lookups(d.NodeId), c.fs.lookups(fe.NodeId))
		}
		if r := c.call(opBatchForget, 0, batch(0)); r.n != 0 {
			t.Fatal("empty BATCH_FORGET replied")
		}
		c.checkFS()
	})
}

func TestNoReplyOps(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for _, tc := range []struct {
			op    uint32
			parts [][]byte
		}{
			{opInterrupt, [][]byte{u64(12345)}},
			{opInterrupt, nil},
			{opForget, [][]byte{args(&gofuse.ForgetIn{Nlookup: 1})}},
			{opBatchForget, [][]byte{u64(0)}},
		} {
			if r := c.call(tc.op, root, tc.parts...); r.n != 0 {
				t.Errorf("%s replied %d bytes", OpName(tc.op), r.n)
			}
		}
	})
}

func TestUnknownOpcodes(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for _, op := range []uint32{0, 7, 19, 31, 32, 33, 37, 39, 40, 41, 48, 49, 51, 52, 53, opCount, 99, 4096, 0xffffffff} {
			c.wantErr(syscall.ENOSYS, op, root, make([]byte, 64))
		}
		// ENOSYS needs no INIT either.
		c2 := newClient(t, lay)
		c2.wantErr(syscall.ENOSYS, 4096, root)
	})
}

func TestOpName(t *testing.T) {
	for op, want := range map[uint32]string{opLookup: "LOOKUP", opInit: "INIT", opCopyFileRange: "COPY_FILE_RANGE", 7: "UNKNOWN", 1 << 20: "UNKNOWN"} {
		if got := OpName(op); got != want {
			t.Errorf("OpName(%d) = %q, want %q", op, got, want)
		}
	}
}

// Workers of one server used from several goroutines at once.
func TestConcurrentWorkers(t *testing.T) {
	c := newSession(t, layouts[1])
	const workers = 4
	done := make(chan error, workers)
	for i := range workers {
		wc := &client{t: t, fs: c.fs, srv: c.srv, w: c.srv.NewWorker(), lay: layouts[i%len(layouts)], ctx: testCaller, outSize: 8192, unique: uint64(i) << 40}
		go func() {
			done <- func() (err error) {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("worker %d: %v", i, r)
					}
				}()
				// t.Fatal must not be called from this goroutine: check
				// the replies here instead.
				ft := &fatalT{TB: t}
				wc.t = ft
				name := fmt.Sprintf("w%d", i)
				for j := 0; j < 50 && !ft.failed; j++ {
					d := wc.mkdir(root, fmt.Sprintf("%s-%d", name, j), 0o755)
					f := wc.create(d.NodeId, "f", syscall.O_RDWR, 0o644)
					data := pattern(3000+j, byte(i))
					wc.write(f.NodeId, f.Fh, 0, data)
					got, _ := wc.read(f.NodeId, f.Fh, 0, 8000)
					if !bytes.Equal(got, data) {
						return fmt.Errorf("worker %d: read back %d bytes", i, len(got))
					}
					wc.getattr(d.NodeId)
					wc.release(f.NodeId, f.Fh)
					wc.forget(f.NodeId, 1)
					wc.forget(d.NodeId, 1)
				}
				if ft.failed {
					return fmt.Errorf("worker %d: %s", i, ft.msg)
				}
				return nil
			}()
		}()
	}
	for range workers {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	c.checkFS()
}

// fatalT records a failure instead of stopping the goroutine.
type fatalT struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fatalT) Helper() {}
func (f *fatalT) Fatalf(format string, args ...any) {
	if !f.failed {
		f.failed, f.msg = true, fmt.Sprintf(format, args...)
	}
	panic(f.msg)
}
func (f *fatalT) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

func TestWalkDirList(t *testing.T) {
	for _, plus := range []bool{false, true} {
		buf := make([]byte, 2000)
		d := NewDirList(buf, plus)
		var want []string
		for i := 0; ; i++ {
			name := strings.Repeat(string(rune('A'+i)), i%11+1)
			eo, ok := d.Add([]byte(name), uint64(100+i), uint64(i+1), 8)
			if !ok {
				break
			}
			if plus {
				eo.NodeId = uint64(100 + i)
			}
			want = append(want, name)
		}
		walk := func(b []byte) (names []string) {
			WalkDirList(b, plus, func(name string, off uint64, e *gofuse.EntryOut) {
				i := len(names)
				if off != uint64(i+1) {
					t.Fatalf("%q: cookie %d, want %d", name, off, i+1)
				}
				if (e != nil) != plus || (plus && e.NodeId != uint64(100+i)) {
					t.Fatalf("%q: entry %v", name, e)
				}
				names = append(names, name)
			})
			return names
		}
		enc := buf[:d.Len()]
		if got := walk(enc); !slices.Equal(got, want) {
			t.Fatalf("plus %v: walked %q, want %q", plus, got, want)
		}
		// A truncated listing stops before the cut entry.
		if got := walk(enc[:len(enc)-1]); !slices.Equal(got, want[:len(want)-1]) {
			t.Fatalf("truncated: walked %d entries", len(got))
		}
		// Malformed name lengths stop the walk without reading past it.
		bad := slices.Clone(enc)
		first := 0
		if plus {
			first = 128
		}
		for _, nl := range []uint32{0xffffffff, 0x7fffffff, uint32(len(enc))} {
			binary.LittleEndian.PutUint32(bad[first+16:], nl)
			if got := walk(bad); len(got) != 0 {
				t.Fatalf("name length %#x: walked %d entries", nl, len(got))
			}
		}
	}
	// Arbitrary bytes never panic.
	for i := range 2000 {
		b := pattern(i%400, byte(i))
		for j := 16; j+4 <= len(b); j += 37 {
			binary.LittleEndian.PutUint32(b[j:], uint32(i*j)%300)
		}
		WalkDirList(b, i%2 == 0, func(string, uint64, *gofuse.EntryOut) {})
	}
}

func TestDebugLog(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.Out = &buf
	l.Level = logrus.DebugLevel
	c := newClientCfg(t, layouts[0], Config{Capabilities: testCaps, Log: l})
	c.init()
	c.wantErr(syscall.ENOENT, opLookup, root, cstr("missing"))
	if !strings.Contains(buf.String(), "LOOKUP (opcode 1") || !strings.Contains(buf.String(), "no such file") {
		t.Fatalf("debug log: %q", buf.String())
	}
	// Without a logger the server uses logrus's standard one.
	s := NewServer(newMemFS(), Config{})
	if s.log != logrus.StandardLogger() {
		t.Fatal("no default logger")
	}
}
