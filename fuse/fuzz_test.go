package fuse

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// FuzzServe feeds a stream of arbitrary requests to a Worker after a valid
// INIT, against a memFS holding a small tree with known ids:
//
//	node 1 root, 2 "d", 3 "d/f" (100 bytes, xattr user.a), 4 "d/l" -> "f"
//	handle 1: "d/f" open O_RDWR, handle 2: "d" open as a directory
//
// stream is a sequence of records: a little-endian uint16 request length,
// a uint16 writable size, then the request bytes (fewer if the stream ends).
// cuts gives segment sizes, one per byte, used in turn for the request and
// (rotated) for the reply buffer.
//
// Every reply must be well-framed (checkReply), nothing may panic while
// served (names reaching the FileSystem are NUL-terminated and buffers at
// least as large as its contract says, or memFS panics; Serve recovers a
// panic, so its count is checked after each request), the server must
// still serve afterwards (fuzzAlive), and the tree be consistent, with
// only valid names in it.
//
// The seed corpus in testdata/fuzz/FuzzServe is fuzzSeeds, written by
// TestFuzzCorpus.
func FuzzServe(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		c := fuzzSession(t)
		inSizes := cutSizes(cuts)
		outSizes := cutSizes(append(cuts[min(len(cuts), 1):], cuts[:min(len(cuts), 1)]...))
		for i := 0; len(stream) >= 4 && i < 16; i++ {
			l := int(binary.LittleEndian.Uint16(stream))
			outSize := int(binary.LittleEndian.Uint16(stream[2:]))
			stream = stream[4:]
			l = min(l, len(stream))
			req := stream[:l]
			stream = stream[l:]

			in := split(req, limitSegs(inSizes, len(req)))
			out := outSegs(outSize, limitSegs(outSizes, outSize))
			n := c.w.Serve(in, out)
			c.checkPanics(fmt.Sprintf("request %d (%s)", i, describe(req)))
			if err := checkReply(req, out, n); err != nil {
				t.Fatalf("request %d (%s): %v", i, describe(req), err)
			}
			if len(req) >= inHeaderSize+24 && n > 0 && binary.LittleEndian.Uint32(req[4:]) == opRead {
				if size := binary.LittleEndian.Uint32(req[inHeaderSize+16:]); int(n) > outHeaderSize+int(size) {
					t.Fatalf("READ of %d bytes answered with %d", size, n-uint32(outHeaderSize))
				}
			}
		}
		fuzzAlive(t, c)
		if err := c.fs.check(); err != nil {
			t.Fatal(err)
		}
	})
}

// fuzzAlive checks that c's server still serves after a fuzzed stream:
// GETATTR of the root (which the guest cannot forget) succeeds, after a
// new INIT if the stream ended the session (DESTROY, a refused INIT).
func fuzzAlive(t *testing.T, c *client) {
	t.Helper()
	getattr := func() reply {
		return c.serve(c.build(opGetattr, root, args(&gofuse.GetAttrIn{})), outHeaderSize+sizeOf[gofuse.AttrOut]())
	}
	r := getattr()
	if r.n != 0 && r.errno() == syscall.EIO && !c.srv.initialized.Load() {
		c.init()
		r = getattr()
	}
	if r.n != uint32(outHeaderSize+sizeOf[gofuse.AttrOut]()) || r.errno() != 0 {
		t.Fatalf("after the stream, GETATTR of the root: n %d, %v; the server no longer serves", r.n, r.errno())
	}
	if a := decode[gofuse.AttrOut](t, r.body).Attr; a.Ino != root || a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("after the stream, GETATTR of the root: ino %d, mode %#o", a.Ino, a.Mode)
	}
}

// cutSizes turns fuzzer bytes into segment sizes; nil (one segment) if
// they would make no progress.
func cutSizes(cuts []byte) []int {
	var sizes []int
	progress := false
	for _, b := range cuts {
		sizes = append(sizes, int(b))
		progress = progress || b != 0
	}
	if !progress {
		return nil
	}
	return sizes
}

// limitSegs keeps the segment count for n bytes within what a descriptor
// chain could have: past 1024 segments the rest goes in one.
func limitSegs(sizes []int, n int) []int {
	segs := splitSizes(n, sizes)
	if len(segs) <= 1024 {
		return segs
	}
	rest := 0
	for _, s := range segs[1023:] {
		rest += s
	}
	return append(segs[:1023:1023], rest)
}

// fuzzSession returns an initialised client with the tree described at
// FuzzServe.
func fuzzSession(t testing.TB) *client {
	c := newClientCfg(t, layout{}, Config{Capabilities: testCaps | gofuse.CAP_SETXATTR_EXT, MaxPages: 16})
	c.init()
	d := c.mkdir(root, "d", 0o755)
	fe := c.create(d.NodeId, "f", syscall.O_RDWR, 0o644)
	c.write(fe.NodeId, fe.Fh, 0, pattern(100, 0))
	l := decode[gofuse.EntryOut](t, c.ok(opSymlink, d.NodeId, cstr("l"), cstr("f")))
	dfh := c.opendir(d.NodeId)
	c.ok(opSetxattr, fe.NodeId, u64(3), make([]byte, 8), cstr("user.a"), []byte("abc"))
	if d.NodeId != 2 || fe.NodeId != 3 || l.NodeId != 4 || fe.Fh != 1 || dfh != 2 {
		t.Fatalf("fuzz tree: ids %d %d %d, handles %d %d", d.NodeId, fe.NodeId, l.NodeId, fe.Fh, dfh)
	}
	return c
}

type fuzzSeed struct {
	name         string
	stream, cuts []byte
}

// record frames one request for the fuzz stream.
func record(req []byte, outSize int) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(len(req)))
	b = binary.LittleEndian.AppendUint16(b, uint16(outSize))
	return append(b, req...)
}

func fuzzSeeds() []fuzzSeed {
	c := &client{ctx: testCaller, unique: 1000}
	cat := func(recs ...[]byte) []byte {
		var b []byte
		for _, r := range recs {
			b = append(b, r...)
		}
		return b
	}
	mkdirExt := withExt(c.build(opMkdir, 2, args(&gofuse.MkdirIn{Mode: 0o755}), cstr("sub")), secCtxExt("user.ctx", []byte("v")))
	return []fuzzSeed{
		{name: "getattr", stream: record(c.build(opGetattr, 3, args(&gofuse.GetAttrIn{})), 120)},
		{name: "lookup-read", cuts: []byte{7, 0, 13, 1}, stream: cat(
			record(c.build(opLookup, 2, cstr("f")), 144),
			record(c.build(opRead, 3, args(&gofuse.ReadIn{Fh: 1, Offset: 10, Size: 200})), 216),
		)},
		{name: "write-read", cuts: []byte{3, 64, 5}, stream: cat(
			record(c.build(opWrite, 3, args(&gofuse.WriteIn{Fh: 1, Offset: 90, Size: 40}), pattern(40, 9)), 24),
			record(c.build(opRead, 3, args(&gofuse.ReadIn{Fh: 1, Offset: 80, Size: 100})), 116),
		)},
		{name: "create-rename-unlink", cuts: []byte{1, 2, 3}, stream: cat(
			record(c.build(opCreate, 2, args(&gofuse.CreateIn{Flags: syscall.O_RDWR, Mode: 0o600}), cstr("new")), 160),
			record(c.build(opRename, 2, u64(1), cstr("new"), cstr("moved")), 16),
			record(c.build(opRename2, 1, args(&gofuse.RenameIn{Newdir: 2, Flags: renameExchange}), cstr("moved"), cstr("f")), 16),
			record(c.build(opUnlink, 1, cstr("moved")), 16),
		)},
		{name: "readdirplus-forget", stream: cat(
			record(c.build(opReaddirplus, 2, args(&gofuse.ReadIn{Fh: 2, Size: 400})), 416),
			record(c.build(opBatchForget, 0, u64(2), u64(3), u64(1), u64(4), u64(1)), 0),
			record(c.build(opForget, 2, args(&gofuse.ForgetIn{Nlookup: 1})), 0),
		)},
		{name: "mkdir-ext-symlink-readlink", cuts: []byte{40, 8, 0, 9}, stream: cat(
			record(mkdirExt, 144),
			record(c.build(opSymlink, 2, cstr("s"), cstr("../d/f")), 144),
			record(c.build(opReadlink, 4), 100),
		)},
		{name: "xattr", stream: cat(
			record(c.build(opSetxattr, 3, u64(2), make([]byte, 8), cstr("user.b"), []byte("xy")), 16),
			record(c.build(opGetxattr, 3, args(&gofuse.GetXAttrIn{}), cstr("user.b")), 24),
			record(c.build(opListxattr, 3, args(&gofuse.GetXAttrIn{Size: 64})), 80),
		)},
		{name: "reinit-destroy", stream: cat(
			record(c.build(opInit, 0, args(initIn())), 80),
			record(c.build(opGetattr, 1, args(&gofuse.GetAttrIn{})), 120),
			record(c.build(opStatfs, 1), 96),
			record(c.build(opDestroy, 0), 16),
		)},
		{name: "misc", cuts: []byte{5}, stream: cat(
			record(c.build(opFallocate, 3, args(&gofuse.FallocateIn{Fh: 1, Offset: 0, Length: 300})), 16),
			record(c.build(opLseek, 3, args(&gofuse.LseekIn{Fh: 1, Offset: 10, Whence: seekHole})), 24),
			record(c.build(opCopyFileRange, 3, args(&gofuse.CopyFileRangeIn{FhIn: 1, NodeIdOut: 3, FhOut: 1, OffOut: 50, Len: 30})), 24),
			record(c.build(opSetattr, 3, args(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_SIZE, Size: 7}})), 120),
			record(c.build(opLink, 1, args(&gofuse.LinkIn{Oldnodeid: 3}), cstr("hard")), 144),
			record(c.build(opSyncfs, 1, u64(0)), 16),
		)},
		{name: "create-ext", cuts: []byte{44, 3, 0, 17}, stream: cat(
			record(withExt(c.build(opCreate, 2, args(&gofuse.CreateIn{Flags: syscall.O_RDWR, Mode: 0o600}), cstr("labelled")),
				cat(secCtxExt("security.selinux", []byte("system_u:object_r:container_file_t:s0\x00")), groupsExt(1000))), 160),
			record(withExt(c.build(opMknod, 2, args(&gofuse.MknodIn{Mode: syscall.S_IFIFO | 0o600}), cstr("fifo")),
				cat(groupsExt(1001), emptySecCtx())), 144),
			record(withExt(c.build(opSymlink, 1, cstr("sl"), cstr("d/f")), cat(emptySecCtx(), groupsExt(7))), 144),
			record(withExt(c.build(opMkdir, 1, args(&gofuse.MkdirIn{Mode: 0o700}), cstr("sd")), emptySecCtx()), 144),
		)},
	}
}

// TestFuzzCorpus checks that testdata/fuzz/FuzzServe holds fuzzSeeds, and
// with FUSE_WRITE_CORPUS=1 writes them there.
func TestFuzzCorpus(t *testing.T) {
	write := os.Getenv("FUSE_WRITE_CORPUS") == "1"
	dir := filepath.Join("testdata", "fuzz", "FuzzServe")
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range fuzzSeeds() {
		path := filepath.Join(dir, "seed-"+s.name)
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n", s.stream, s.cuts)
		if write {
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != body {
			t.Errorf("%s is missing or stale (%v): run FUSE_WRITE_CORPUS=1 go test -run TestFuzzCorpus ./fuse/", path, err)
		}
	}
}

// The seeds themselves succeed, so the fuzzer starts from deep states.
func TestFuzzSeedsSucceed(t *testing.T) {
	for _, s := range fuzzSeeds() {
		t.Run(s.name, func(t *testing.T) {
			c := fuzzSession(t)
			stream := s.stream
			for len(stream) >= 4 {
				l := int(binary.LittleEndian.Uint16(stream))
				outSize := int(binary.LittleEndian.Uint16(stream[2:]))
				req := stream[4 : 4+l]
				stream = stream[4+l:]
				op := binary.LittleEndian.Uint32(req[4:])
				r := c.serve(req, outSize)
				if ops[op].noReply {
					if r.n != 0 {
						t.Fatalf("%s replied", OpName(op))
					}
					continue
				}
				if r.n == 0 || r.errno() != 0 {
					t.Fatalf("%s: n %d, %v", OpName(op), r.n, r.errno())
				}
			}
			c.checkFS()
		})
	}
}
