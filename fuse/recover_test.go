package fuse

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// panicNode is the node id whose requests make panicFS panic.
const panicNode = 0x7777

// panicFS is a memFS whose methods panic as a buggy FileSystem would:
// GetAttr and Forget of panicNode, Lookup of the name "panic", Read at
// offset panicNode after filling its buffer, Init while panicInit is set.
type panicFS struct {
	*memFS
	panicInit bool
}

func (fs *panicFS) Init(info InitInfo) {
	if fs.panicInit {
		panic("Init panics")
	}
	fs.memFS.Init(info)
}

func (fs *panicFS) GetAttr(in *gofuse.GetAttrIn, out *gofuse.AttrOut) Status {
	if in.NodeId == panicNode {
		var none []byte
		_ = none[in.NodeId] // index out of range, as an unchecked buffer would
	}
	return fs.memFS.GetAttr(in, out)
}

func (fs *panicFS) Lookup(h *gofuse.InHeader, name Name, out *gofuse.EntryOut) Status {
	if string(name) == "panic" {
		// Half the reply filled in, and the memFS lock held (let go by
		// its defer).
		out.NodeId = 12345
		fs.mu.Lock()
		defer fs.mu.Unlock()
		panic(errors.New("Lookup panics"))
	}
	return fs.memFS.Lookup(h, name, out)
}

func (fs *panicFS) Forget(nodeID, nlookup uint64) {
	if nodeID == panicNode {
		panic("Forget panics")
	}
	fs.memFS.Forget(nodeID, nlookup)
}

func (fs *panicFS) Read(in *gofuse.ReadIn, dst [][]byte) (int, Status) {
	if in.Offset == panicNode {
		for _, d := range dst {
			for i := range d {
				d[i] = 0xee
			}
		}
		panic("Read panics")
	}
	return fs.memFS.Read(in, dst)
}

// newPanicClient returns a client whose server serves a panicFS over the
// client's memFS, logging into the client's buffer.
func newPanicClient(t *testing.T, lay layout) (*client, *panicFS) {
	c := newClient(t, lay)
	fs := &panicFS{memFS: c.fs}
	log, logs := bufferLogger()
	c.srv = NewServer(fs, Config{Capabilities: testCaps, Log: log})
	c.w = c.srv.NewWorker()
	c.logs = logs
	c.allowPanics = true
	return c, fs
}

// logLines returns the lines of the client's log that contain all of subs.
func (c *client) logLines(subs ...string) int {
	n := 0
	for _, line := range strings.Split(c.logs.String(), "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// TestPanicAnsweredEIO: a request whose serving panics gets a well-formed
// EIO reply, the panic is logged once per site and then only at powers of
// ten, and the worker serves the next request.
func TestPanicAnsweredEIO(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c, _ := newPanicClient(t, lay)
		c.init()
		f := c.create(root, "f", syscall.O_RDWR, 0o644)
		c.write(f.NodeId, f.Fh, 0, pattern(100, 1))
		getattr := func() []byte { return c.build(opGetattr, panicNode, args(&gofuse.GetAttrIn{})) }

		r := c.serve(getattr(), 4096)
		if r.n != uint32(outHeaderSize) || r.errno() != syscall.EIO {
			t.Fatalf("GETATTR that panics: n %d, %v; want a 16-byte EIO reply", r.n, r.errno())
		}
		if got := c.srv.Panics(); got != 1 {
			t.Fatalf("Panics() = %d after one panic", got)
		}
		if n := c.logLines("BUG: serving GETATTR", "panicFS).GetAttr", "index out of range"); n != 1 {
			t.Fatalf("%d log lines name the GETATTR panic, its site and its value; want 1:\n%s", n, c.logs)
		}
		if !strings.Contains(c.logs.String(), "goroutine ") {
			t.Errorf("the first panic at a site is logged without its stack:\n%s", c.logs)
		}
		// The next requests are served.
		c.getattr(root)
		if e := c.lookup(root, "f"); e.NodeId != f.NodeId {
			t.Fatalf("LOOKUP after the panic found %d", e.NodeId)
		}

		// A guest repeating it: every one answered, the log bounded.
		for i := 1; i < 1000; i++ {
			if r := c.serve(getattr(), 4096); r.errno() != syscall.EIO {
				t.Fatalf("GETATTR that panics, %d: %v", i, r.errno())
			}
		}
		if n := c.logLines("GETATTR"); n != 4 {
			t.Errorf("1000 panics at one site logged on %d lines; want 4 (1st, 10th, 100th, 1000th):\n%s", n, c.logs)
		}
		if n := c.logLines("GETATTR has panicked 1000 times"); n != 1 {
			t.Errorf("no line counts 1000 panics:\n%s", c.logs)
		}

		// Another site: logged on its own. The handler held the memFS
		// lock and had written part of its reply.
		if r := c.serve(c.build(opLookup, root, cstr("panic")), 4096); r.n != uint32(outHeaderSize) || r.errno() != syscall.EIO {
			t.Fatalf("LOOKUP that panics: n %d, %v", r.n, r.errno())
		}
		if n := c.logLines("BUG: serving LOOKUP", "panicFS).Lookup", "Lookup panics"); n != 1 {
			t.Fatalf("LOOKUP's panic logged on %d lines:\n%s", n, c.logs)
		}
		c.lookup(root, "f")

		// READ that panics after writing data to the reply buffer: the
		// reply is the error alone, and the worker keeps no slice of
		// guest memory.
		r = c.serve(c.build(opRead, f.NodeId, args(&gofuse.ReadIn{Fh: f.Fh, Offset: panicNode, Size: 100})), outHeaderSize+100)
		if r.n != uint32(outHeaderSize) || r.errno() != syscall.EIO {
			t.Fatalf("READ that panics: n %d, %v", r.n, r.errno())
		}
		if len(c.w.segs) != 0 {
			t.Fatalf("worker keeps %d segments after a panic", len(c.w.segs))
		}
		for i, s := range c.w.segs[:cap(c.w.segs)] {
			if s != nil {
				t.Fatalf("worker keeps segment %d (%d bytes of guest memory) after a panic", i, len(s))
			}
		}
		if got, errno := c.read(f.NodeId, f.Fh, 0, 100); errno != 0 || string(got) != string(pattern(100, 1)) {
			t.Fatalf("READ after the panic: %v, %d bytes", errno, len(got))
		}

		// FORGET has no reply, even when it panics.
		before := c.srv.Panics()
		if r := c.call(opForget, panicNode, args(&gofuse.ForgetIn{Nlookup: 1})); r.n != 0 {
			t.Fatalf("FORGET that panics replied %d bytes", r.n)
		}
		if r := c.call(opBatchForget, 0, u64(1), u64(panicNode), u64(1)); r.n != 0 {
			t.Fatalf("BATCH_FORGET that panics replied %d bytes", r.n)
		}
		if got := c.srv.Panics() - before; got != 2 {
			t.Fatalf("%d panics counted for FORGET and BATCH_FORGET; want 2", got)
		}
		if n := c.logLines("BUG: serving FORGET", "Forget panics"); n != 1 {
			t.Fatalf("FORGET's panic logged on %d lines:\n%s", n, c.logs)
		}
		if n := c.logLines("BUG: serving BATCH_FORGET", "Forget panics"); n != 1 {
			t.Fatalf("BATCH_FORGET's panic logged on %d lines:\n%s", n, c.logs)
		}
		c.getattr(root)
		c.checkFS()
	})
}

// TestPanicInInit: an INIT whose FileSystem.Init panics is answered EIO
// and leaves the session uninitialised but not locked: the next INIT
// works.
func TestPanicInInit(t *testing.T) {
	c, fs := newPanicClient(t, layouts[1])
	c.init()
	f := c.create(root, "f", syscall.O_RDWR, 0o644)
	fs.panicInit = true
	c.wantErr(syscall.EIO, opInit, 0, args(initIn()))
	if n := c.logLines("BUG: serving INIT", "Init panics"); n != 1 {
		t.Fatalf("INIT's panic logged on %d lines:\n%s", n, c.logs)
	}
	// The old session ended before the panic; no new one began.
	c.wantErr(syscall.EIO, opGetattr, root, args(&gofuse.GetAttrIn{}))
	fs.panicInit = false
	done := make(chan struct{})
	go func() {
		defer close(done)
		// On this goroutine t.Fatal must not be called: check the
		// reply by hand.
		r := c.w.Serve(split(c.build(opInit, 0, args(initIn())), nil), outSegs(4096, nil))
		if r != uint32(outHeaderSize+64) {
			t.Errorf("INIT after the panic: %d bytes", r)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("INIT after a panicking INIT is stuck: the server's lock was not let go")
	}
	c.getattr(root)
	c.wantErr(syscall.EBADF, opGetattr, f.NodeId, args(&gofuse.GetAttrIn{}))
	c.lookup(root, "f")
}

// TestPanicBeforeHeader: a panic before the request's header is decoded
// is answered with nothing, as such a request would be.
func TestPanicBeforeHeader(t *testing.T) {
	c, _ := newPanicClient(t, layouts[0])
	c.init()
	c.w.h = nil
	if n := c.w.recovered("early", outSegs(4096, nil)); n != 0 {
		t.Fatalf("a panic before the header was decoded answered %d bytes", n)
	}
	if n := c.logLines("BUG: serving a request whose header was not decoded", "early"); n != 1 {
		t.Fatalf("logged on %d lines:\n%s", n, c.logs)
	}
	c.getattr(root)
}

func TestLogPanicAt(t *testing.T) {
	var logged []uint64
	for n := uint64(1); n <= 100000; n++ {
		if logPanicAt(n) {
			logged = append(logged, n)
		}
	}
	want := []uint64{1, 10, 100, 1000, 10000, 100000}
	if len(logged) != len(want) {
		t.Fatalf("logged at %v, want %v", logged, want)
	}
	for i := range want {
		if logged[i] != want[i] {
			t.Fatalf("logged at %v, want %v", logged, want)
		}
	}
}
