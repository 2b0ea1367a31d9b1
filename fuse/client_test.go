package fuse

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// layout says how a request and its reply buffer are cut into descriptor
// segments: segment sizes are taken from the lists in turn, cycling, and
// the last segment takes what is left. A nil list means one segment.
// Zero sizes produce empty segments, which virtio allows.
type layout struct {
	name    string
	in, out []int
}

// layouts are the segmentations every protocol test runs under.
var layouts = []layout{
	{"whole", nil, nil},
	{"odd", []int{7, 0, 13, 1, 29, 64, 3, 250}, []int{5, 11, 0, 2, 37, 90, 4093}},
	{"bytes", []int{1, 2, 3, 0}, []int{3, 1, 2, 17}},
	{"pages", []int{4096}, []int{4096}},
}

// splitSizes returns the segment lengths for n bytes.
func splitSizes(n int, sizes []int) []int {
	if len(sizes) == 0 {
		return []int{n}
	}
	var out []int
	for i := 0; n > 0; i++ {
		s := min(sizes[i%len(sizes)], n)
		out = append(out, s)
		n -= s
	}
	if len(out) == 0 {
		out = append(out, 0)
	}
	return out
}

// split copies buf into separately allocated segments (so that nothing can
// spill from one into the next unnoticed) laid out by sizes.
func split(buf []byte, sizes []int) [][]byte {
	var segs [][]byte
	off := 0
	for _, n := range splitSizes(len(buf), sizes) {
		s := make([]byte, n)
		copy(s, buf[off:off+n])
		segs = append(segs, s)
		off += n
	}
	return segs
}

// outSegs returns fresh writable segments of n bytes in total, filled with
// a marker so that bytes the server did not write are recognisable.
func outSegs(n int, sizes []int) [][]byte {
	segs := split(make([]byte, n), sizes)
	for _, s := range segs {
		for i := range s {
			s[i] = 0xA5
		}
	}
	return segs
}

// flatten returns the first n bytes of segs as one slice.
func flatten(segs [][]byte, n int) []byte {
	out := make([]byte, 0, n)
	for _, s := range segs {
		out = append(out, s[:min(len(s), n-len(out))]...)
		if len(out) == n {
			break
		}
	}
	return out
}

// bytesOf returns the memory of *v.
func bytesOf[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// args returns the argument bytes of a go-fuse In struct (which embeds the
// request header): everything after the header.
func args[T any](v *T) []byte {
	return bytesOf(v)[inHeaderSize:]
}

// decode returns the T at the start of b.
func decode[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	if len(b) < int(unsafe.Sizeof(v)) {
		t.Fatalf("reply body of %d bytes is too short for %T (%d bytes)", len(b), v, unsafe.Sizeof(v))
	}
	copy(bytesOf(&v), b)
	return v
}

// cstr returns s with a terminating NUL.
func cstr(s string) []byte { return append([]byte(s), 0) }

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

var testCaller = gofuse.Caller{Owner: gofuse.Owner{Uid: 1000, Gid: 1000}, Pid: 4242}

// testCaps are the capabilities the test server offers.
const testCaps = gofuse.CAP_ASYNC_READ | gofuse.CAP_BIG_WRITES | gofuse.CAP_READDIRPLUS |
	gofuse.CAP_MAX_PAGES | gofuse.CAP_INIT_EXT | gofuse.CAP_PARALLEL_DIROPS |
	gofuse.CAP_SECURITY_CTX | gofuse.CAP_CREATE_SUPP_GROUP

// guestFlags are what a recent Linux guest offers.
const guestFlags uint64 = 0x7fffffff | gofuse.CAP_INIT_EXT | gofuse.CAP_SECURITY_CTX |
	gofuse.CAP_HAS_INODE_DAX | gofuse.CAP_CREATE_SUPP_GROUP | gofuse.CAP_HAS_EXPIRE_ONLY

func quietLogger() logrus.FieldLogger {
	l := logrus.New()
	l.Out = io.Discard
	return l
}

// logBuffer keeps a test server's log, for the message of a test that
// fails on it. It is safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	if l == nil {
		return "(log not kept)"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// bufferLogger returns a logger into a new logBuffer.
func bufferLogger() (*logrus.Logger, *logBuffer) {
	b := &logBuffer{}
	l := logrus.New()
	l.Out = b
	return l, b
}

// client speaks FUSE to a Worker the way a guest driver would, with the
// request and reply buffers cut into segments by a layout.
type client struct {
	t      testing.TB
	fs     *memFS
	srv    *Server
	w      *Worker
	lay    layout
	unique uint64
	ctx    gofuse.Caller
	// outSize is the writable size of requests that do not give one.
	outSize int
	// logs is the server's log, when the client made the logger.
	logs *logBuffer
	// allowPanics lets requests panic: Serve answers them EIO. Otherwise
	// a panic while serving, which Serve recovers from, fails the test.
	allowPanics bool
}

func newClientCfg(t testing.TB, lay layout, cfg Config) *client {
	var logs *logBuffer
	if cfg.Log == nil {
		cfg.Log, logs = bufferLogger()
	}
	fs := newMemFS()
	srv := NewServer(fs, cfg)
	c := &client{t: t, fs: fs, srv: srv, w: srv.NewWorker(), lay: lay, ctx: testCaller, outSize: 8192, logs: logs}
	t.Cleanup(func() {
		if n := c.srv.Panics(); n != 0 && !c.allowPanics {
			t.Errorf("%d requests panicked while served:\n%s", n, c.logs)
		}
	})
	return c
}

// checkPanics fails the test if serving a request panicked and the test
// did not allow it.
func (c *client) checkPanics(what string) {
	c.t.Helper()
	if n := c.srv.Panics(); n != 0 && !c.allowPanics {
		c.t.Fatalf("%s: serving panicked (%d so far):\n%s", what, n, c.logs)
	}
}

// newClient returns a client of a fresh server and memFS, not initialised.
func newClient(t testing.TB, lay layout) *client {
	return newClientCfg(t, lay, Config{Capabilities: testCaps})
}

// newSession returns a client after a successful INIT.
func newSession(t testing.TB, lay layout) *client {
	c := newClient(t, lay)
	c.init()
	return c
}

// initIn is the INIT of a 7.41 guest with INIT_EXT.
func initIn() *gofuse.InitIn {
	return &gofuse.InitIn{
		Major: 7, Minor: 41, MaxReadAhead: 128 << 10,
		Flags: uint32(guestFlags & 0xffffffff), Flags2: uint32(guestFlags >> 32),
	}
}

func (c *client) init() gofuse.InitOut {
	c.t.Helper()
	return decode[gofuse.InitOut](c.t, c.ok(opInit, 0, args(initIn())))
}

// reply is a decoded reply.
type reply struct {
	n    uint32 // what Serve returned
	hdr  gofuse.OutHeader
	body []byte
}

func (r reply) errno() syscall.Errno { return syscall.Errno(-r.hdr.Status) }

// header returns a request header for op on node.
func (c *client) header(op uint32, node uint64) gofuse.InHeader {
	c.unique += 2
	return gofuse.InHeader{Opcode: op, Unique: c.unique, NodeId: node, Caller: c.ctx}
}

// build returns a request for op on node with the given argument parts,
// its header's Length set to the whole.
func (c *client) build(op uint32, node uint64, parts ...[]byte) []byte {
	h := c.header(op, node)
	req := append([]byte(nil), bytesOf(&h)...)
	for _, p := range parts {
		req = append(req, p...)
	}
	binary.LittleEndian.PutUint32(req[0:], uint32(len(req)))
	return req
}

// serve hands req to the worker with outSize writable bytes, both cut by
// the client's layout, and decodes and checks the reply's framing.
func (c *client) serve(req []byte, outSize int) reply {
	c.t.Helper()
	in := split(req, c.lay.in)
	out := outSegs(outSize, c.lay.out)
	n := c.w.Serve(in, out)
	r := reply{n: n}
	c.checkPanics(describe(req))
	if err := checkReply(req, out, n); err != nil {
		c.t.Fatalf("%s: %v", describe(req), err)
	}
	if n == 0 {
		return r
	}
	b := flatten(out, int(n))
	r.hdr = decode[gofuse.OutHeader](c.t, b)
	r.body = b[outHeaderSize:]
	return r
}

// checkReply checks the framing of a reply of n bytes in out to req.
func checkReply(req []byte, out [][]byte, n uint32) error {
	if int(n) > total(out) {
		return fmt.Errorf("Serve returned %d, more than the %d writable bytes", n, total(out))
	}
	if n == 0 {
		return nil
	}
	if n < uint32(outHeaderSize) {
		return fmt.Errorf("Serve returned %d, less than an out header", n)
	}
	b := flatten(out, int(n))
	var hdr gofuse.OutHeader
	copy(bytesOf(&hdr), b)
	if hdr.Length != n {
		return fmt.Errorf("header length %d, Serve returned %d", hdr.Length, n)
	}
	if len(req) >= 16 {
		if u := binary.LittleEndian.Uint64(req[8:]); hdr.Unique != u {
			return fmt.Errorf("reply unique %d, request unique %d", hdr.Unique, u)
		}
	}
	if hdr.Status > 0 || hdr.Status < -4095 {
		return fmt.Errorf("status %d is not 0 or a negated errno", hdr.Status)
	}
	if hdr.Status != 0 && n != uint32(outHeaderSize) {
		return fmt.Errorf("error %d with a %d-byte body", hdr.Status, n-uint32(outHeaderSize))
	}
	return nil
}

func describe(req []byte) string {
	if len(req) < 8 {
		return fmt.Sprintf("request of %d bytes", len(req))
	}
	op := binary.LittleEndian.Uint32(req[4:])
	return fmt.Sprintf("%s (%d bytes)", OpName(op), len(req))
}

// call sends op with the default writable size.
func (c *client) call(op uint32, node uint64, parts ...[]byte) reply {
	c.t.Helper()
	return c.serve(c.build(op, node, parts...), c.outSize)
}

// ok sends op, requires success, and returns the reply body.
func (c *client) ok(op uint32, node uint64, parts ...[]byte) []byte {
	c.t.Helper()
	r := c.call(op, node, parts...)
	if r.n == 0 {
		c.t.Fatalf("%s: no reply", OpName(op))
	}
	if r.errno() != 0 {
		c.t.Fatalf("%s: %v", OpName(op), r.errno())
	}
	return r.body
}

// fail sends op and returns its errno, failing the test if it has no reply
// or a successful one.
func (c *client) fail(op uint32, node uint64, parts ...[]byte) syscall.Errno {
	c.t.Helper()
	r := c.call(op, node, parts...)
	if r.n == 0 {
		c.t.Fatalf("%s: no reply", OpName(op))
	}
	return r.errno()
}

// wantErr sends op and requires errno want.
func (c *client) wantErr(want syscall.Errno, op uint32, node uint64, parts ...[]byte) {
	c.t.Helper()
	if got := c.fail(op, node, parts...); got != want {
		c.t.Fatalf("%s: got %v (%d), want %v (%d)", OpName(op), got, int(got), want, int(want))
	}
}

// --- typed operations ---

func (c *client) lookup(parent uint64, name string) gofuse.EntryOut {
	c.t.Helper()
	return decode[gofuse.EntryOut](c.t, c.ok(opLookup, parent, cstr(name)))
}

func (c *client) getattr(node uint64) gofuse.Attr {
	c.t.Helper()
	return decode[gofuse.AttrOut](c.t, c.ok(opGetattr, node, args(&gofuse.GetAttrIn{}))).Attr
}

func (c *client) mkdir(parent uint64, name string, mode uint32) gofuse.EntryOut {
	c.t.Helper()
	return decode[gofuse.EntryOut](c.t, c.ok(opMkdir, parent, args(&gofuse.MkdirIn{Mode: mode}), cstr(name)))
}

func (c *client) create(parent uint64, name string, flags, mode uint32) gofuse.CreateOut {
	c.t.Helper()
	return decode[gofuse.CreateOut](c.t, c.ok(opCreate, parent,
		args(&gofuse.CreateIn{Flags: flags, Mode: mode}), cstr(name)))
}

func (c *client) open(node uint64, flags uint32) uint64 {
	c.t.Helper()
	return decode[gofuse.OpenOut](c.t, c.ok(opOpen, node, args(&gofuse.OpenIn{Flags: flags}))).Fh
}

func (c *client) opendir(node uint64) uint64 {
	c.t.Helper()
	return decode[gofuse.OpenOut](c.t, c.ok(opOpendir, node, args(&gofuse.OpenIn{}))).Fh
}

func (c *client) writeReq(node, fh, off uint64, data []byte) []byte {
	return c.build(opWrite, node, args(&gofuse.WriteIn{Fh: fh, Offset: off, Size: uint32(len(data))}), data)
}

func (c *client) write(node, fh, off uint64, data []byte) uint32 {
	c.t.Helper()
	r := c.serve(c.writeReq(node, fh, off, data), outHeaderSize+8)
	if r.n == 0 || r.errno() != 0 {
		c.t.Fatalf("WRITE: n %d, %v", r.n, r.errno())
	}
	return decode[gofuse.WriteOut](c.t, r.body).Size
}

// read reads size bytes at off with room for exactly that in the reply.
func (c *client) read(node, fh, off uint64, size uint32) ([]byte, syscall.Errno) {
	c.t.Helper()
	r := c.serve(c.build(opRead, node, args(&gofuse.ReadIn{Fh: fh, Offset: off, Size: size})), outHeaderSize+int(size))
	if r.n == 0 {
		c.t.Fatalf("READ: no reply")
	}
	return r.body, r.errno()
}

func (c *client) release(node, fh uint64) {
	c.t.Helper()
	c.ok(opRelease, node, args(&gofuse.ReleaseIn{Fh: fh}))
}

func (c *client) forget(node, n uint64) {
	c.t.Helper()
	if r := c.call(opForget, node, args(&gofuse.ForgetIn{Nlookup: n})); r.n != 0 {
		c.t.Fatalf("FORGET replied %d bytes", r.n)
	}
}

// dirent is one decoded READDIR(PLUS) entry.
type dirent struct {
	ino, off uint64
	typ      uint32
	name     string
	entry    gofuse.EntryOut // READDIRPLUS
}

// direntLen is the encoded size of an entry with a name of n bytes.
func direntLen(n int, plus bool) int {
	l := 24 + (n+7)&^7
	if plus {
		l += 128
	}
	return l
}

// parseDirents decodes a READDIR(PLUS) body, checking sizes and padding.
func parseDirents(b []byte, plus bool) ([]dirent, error) {
	var out []dirent
	for len(b) > 0 {
		var d dirent
		if plus {
			if len(b) < 128 {
				return nil, fmt.Errorf("%d bytes left, too short for an entry_out", len(b))
			}
			copy(bytesOf(&d.entry), b)
			b = b[128:]
		}
		if len(b) < 24 {
			return nil, fmt.Errorf("%d bytes left, too short for a dirent", len(b))
		}
		d.ino = binary.LittleEndian.Uint64(b[0:])
		d.off = binary.LittleEndian.Uint64(b[8:])
		nl := int(binary.LittleEndian.Uint32(b[16:]))
		d.typ = binary.LittleEndian.Uint32(b[20:])
		size := 24 + (nl+7)&^7
		if nl == 0 || nl > 255 || size > len(b) {
			return nil, fmt.Errorf("dirent name length %d with %d bytes left", nl, len(b))
		}
		d.name = string(b[24 : 24+nl])
		for _, p := range b[24+nl : size] {
			if p != 0 {
				return nil, fmt.Errorf("entry %q: padding not zero", d.name)
			}
		}
		out = append(out, d)
		b = b[size:]
	}
	return out, nil
}

// readdir reads a directory listing from off with a buffer of size bytes.
func (c *client) readdir(dir, fh, off uint64, size uint32, plus bool) []dirent {
	c.t.Helper()
	op := uint32(opReaddir)
	if plus {
		op = opReaddirplus
	}
	r := c.serve(c.build(op, dir, args(&gofuse.ReadIn{Fh: fh, Offset: off, Size: size})), outHeaderSize+int(size))
	if r.n == 0 || r.errno() != 0 {
		c.t.Fatalf("%s: n %d, %v", OpName(op), r.n, r.errno())
	}
	if len(r.body) > int(size) {
		c.t.Fatalf("%s: %d bytes of entries for a %d-byte buffer", OpName(op), len(r.body), size)
	}
	ents, err := parseDirents(r.body, plus)
	if err != nil {
		c.t.Fatalf("%s: %v", OpName(op), err)
	}
	return ents
}

// checkFS fails the test if the memFS is inconsistent.
func (c *client) checkFS() {
	c.t.Helper()
	if err := c.fs.check(); err != nil {
		c.t.Fatal(err)
	}
}

// forLayouts runs f once per layout.
func forLayouts(t *testing.T, f func(t *testing.T, lay layout)) {
	for _, lay := range layouts {
		t.Run(lay.name, func(t *testing.T) { f(t, lay) })
	}
}
