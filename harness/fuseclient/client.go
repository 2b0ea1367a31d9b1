// Package fuseclient is a FUSE client that speaks to a virtio-fs back-end
// through a frontend.Frontend, as the Linux guest driver does: typed calls
// (Init, Lookup, Create, Read, Write, ReaddirPlus...) encoded in place in
// guest memory with the go-fuse wire structs, sent as descriptor chains on
// the request queues (FORGET on the high-priority queue), with replies
// matched by chain head and checked against the request's unique.
//
// It sits on top of package frontend and below tests and benchmarks. The
// back-end is not trusted: every reply is validated (unique, lengths,
// error range) and a violation is a *ProtocolError, distinct from the
// syscall.Errno a well-formed error reply carries. Calls may run
// concurrently from many goroutines; in steady state a call allocates
// nothing beyond what its result needs. A Loop keeps many requests in
// flight on one queue from a single goroutine instead (benchmarks).
package fuseclient

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// FUSE opcodes (go-fuse keeps its own unexported).
const (
	OpLookup      = 1
	OpForget      = 2
	OpGetattr     = 3
	OpSetattr     = 4
	OpReadlink    = 5
	OpSymlink     = 6
	OpMknod       = 8
	OpMkdir       = 9
	OpUnlink      = 10
	OpRmdir       = 11
	OpRename      = 12
	OpLink        = 13
	OpOpen        = 14
	OpRead        = 15
	OpWrite       = 16
	OpStatfs      = 17
	OpRelease     = 18
	OpFsync       = 20
	OpSetxattr    = 21
	OpGetxattr    = 22
	OpListxattr   = 23
	OpRemovexattr = 24
	OpFlush       = 25
	OpInit        = 26
	OpOpendir     = 27
	OpReaddir     = 28
	OpReleasedir  = 29
	OpFsyncdir    = 30
	OpAccess      = 34
	OpCreate      = 35
	OpInterrupt   = 36
	OpDestroy     = 38
	OpBatchForget = 42
	OpFallocate   = 43
	OpReaddirplus = 44
	OpRename2     = 45
	OpLseek       = 46
	OpSyncfs      = 50
	OpSetupMap    = 48
	OpRemoveMap   = 49
)

// RootID is the node id of the shared folder's root.
const RootID = 1

// Protocol version the client speaks.
const (
	KernelMajor = 7
	KernelMinor = 41
)

// LinuxInitFlags are the INIT flags a Linux 6.12 guest offers on a
// virtio-fs mount without DAX (fs/fuse/inode.c fuse_send_init, plus
// SUBMOUNTS which virtio-fs sets).
const LinuxInitFlags uint64 = fuse.CAP_ASYNC_READ | fuse.CAP_POSIX_LOCKS | fuse.CAP_ATOMIC_O_TRUNC |
	fuse.CAP_EXPORT_SUPPORT | fuse.CAP_BIG_WRITES | fuse.CAP_DONT_MASK | fuse.CAP_SPLICE_WRITE |
	fuse.CAP_SPLICE_MOVE | fuse.CAP_SPLICE_READ | fuse.CAP_FLOCK_LOCKS | fuse.CAP_IOCTL_DIR |
	fuse.CAP_AUTO_INVAL_DATA | fuse.CAP_READDIRPLUS | fuse.CAP_READDIRPLUS_AUTO | fuse.CAP_ASYNC_DIO |
	fuse.CAP_WRITEBACK_CACHE | fuse.CAP_NO_OPEN_SUPPORT | fuse.CAP_PARALLEL_DIROPS |
	fuse.CAP_HANDLE_KILLPRIV | fuse.CAP_POSIX_ACL | fuse.CAP_ABORT_ERROR | fuse.CAP_MAX_PAGES |
	fuse.CAP_CACHE_SYMLINKS | fuse.CAP_NO_OPENDIR_SUPPORT | fuse.CAP_EXPLICIT_INVAL_DATA |
	fuse.CAP_HANDLE_KILLPRIV_V2 | fuse.CAP_SETXATTR_EXT | fuse.CAP_INIT_EXT | fuse.CAP_SECURITY_CTX |
	fuse.CAP_CREATE_SUPP_GROUP | fuse.CAP_HAS_EXPIRE_ONLY | fuse.CAP_DIRECT_IO_ALLOW_MMAP |
	fuse.CAP_NO_EXPORT_SUPPORT | fuse.CAP_HAS_RESEND | fuse.CAP_ALLOW_IDMAP | fuse.CAP_SUBMOUNTS

// Wire sizes.
const (
	inHeaderSize  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(fuse.OutHeader{}))
	entryOutSize  = int(unsafe.Sizeof(fuse.EntryOut{}))
	attrOutSize   = int(unsafe.Sizeof(fuse.AttrOut{}))
	openOutSize   = int(unsafe.Sizeof(fuse.OpenOut{}))
	initOutSize   = int(unsafe.Sizeof(fuse.InitOut{}))
	statfsOutSize = int(unsafe.Sizeof(fuse.StatfsOut{}))
	direntSize    = 24
	// compatInitOutSize is the smallest INIT reply (FUSE 7.22).
	compatInitOutSize = 24

	inBufSize  = 8 << 10 // header, arguments and names
	outBufSize = 4 << 10 // header and fixed-size replies
	pageSize   = 4096
)

// Options tune a Client.
type Options struct {
	// InitFlags are offered at INIT; LinuxInitFlags when 0.
	InitFlags uint64
	// MaxReadahead is sent at INIT; 128 KiB (Linux's default) when 0.
	MaxReadahead uint32
	// SplitPages sends and receives data in one descriptor per 4 KiB page,
	// as Linux does; otherwise data travels in one descriptor.
	SplitPages bool
	// Caller is the uid, gid and pid put in request headers; the current
	// process's when zero.
	Caller fuse.Caller
	// Umask is sent with CREATE and MKDIR.
	Umask uint32
}

// Client is a FUSE session over a Frontend. It is safe for concurrent
// use. A Client value is bound to one request queue, or spreads calls
// round-robin over all of them (see OnQueue).
type Client struct {
	*session
	queue int // request queue, 0 = round-robin
}

type session struct {
	fe     *frontend.Frontend
	opts   Options
	unique atomic.Uint64
	next   atomic.Uint32

	mu   sync.Mutex
	free []*call
	all  []*call

	initOut atomic.Pointer[fuse.InitOut]
	secctx  atomic.Bool // SECURITY_CTX negotiated: creates carry an empty context
}

// call is the per-request scratch: guest buffers and the chain.
type call struct {
	req     *frontend.Request
	in      uint64
	inB     []byte
	out     uint64
	outB    []byte
	data    uint64
	dataB   []byte
	dataCap uint64
	bufs    []virtqueue.Buffer
	lost    bool // timed out: still in flight, never reused
}

// New returns a client over fe. Call Init before anything else.
func New(fe *frontend.Frontend, opts Options) *Client {
	if opts.InitFlags == 0 {
		opts.InitFlags = LinuxInitFlags
	}
	if opts.MaxReadahead == 0 {
		opts.MaxReadahead = 128 << 10
	}
	if opts.Caller == (fuse.Caller{}) {
		opts.Caller = fuse.Caller{Owner: fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}, Pid: uint32(os.Getpid())}
	}
	return &Client{session: &session{fe: fe, opts: opts}}
}

// OnQueue returns a view of the client that sends every request (FORGET
// aside) on request queue i (1..n); i = 0 spreads them round-robin.
func (c *Client) OnQueue(i int) *Client { return &Client{session: c.session, queue: i} }

// Frontend returns the transport.
func (c *Client) Frontend() *frontend.Frontend { return c.fe }

// InitOut returns the INIT reply, or nil before Init.
func (c *Client) InitOut() *fuse.InitOut { return c.initOut.Load() }

// Close frees the guest buffers of idle calls.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.free {
		m := c.fe.Mem
		m.Free(k.in, inBufSize)
		m.Free(k.out, outBufSize)
		if k.dataCap > 0 {
			m.Free(k.data, k.dataCap)
		}
		k.req.Release()
	}
	c.free = nil
}

func (c *Client) requestQueue() (*frontend.Queue, error) {
	n := c.fe.NumQueues() - 1
	if n < 1 {
		return nil, errors.New("fuseclient: no request queue")
	}
	i := c.queue
	if i == 0 {
		i = 1 + int(c.next.Add(1)%uint32(n))
	}
	q := c.fe.Queue(i)
	if q == nil || i == 0 {
		return nil, fmt.Errorf("fuseclient: no request queue %d", i)
	}
	return q, nil
}

func (c *Client) get() (*call, error) {
	c.mu.Lock()
	if n := len(c.free); n > 0 {
		k := c.free[n-1]
		c.free = c.free[:n-1]
		c.mu.Unlock()
		return k, nil
	}
	c.mu.Unlock()
	m := c.fe.Mem
	in, err := m.Alloc(inBufSize)
	if err != nil {
		return nil, err
	}
	out, err := m.Alloc(outBufSize)
	if err != nil {
		m.Free(in, inBufSize)
		return nil, err
	}
	k := &call{req: c.fe.NewRequest(), in: in, out: out, bufs: make([]virtqueue.Buffer, 0, 8)}
	k.inB, _ = m.Bytes(in, inBufSize)
	k.outB, _ = m.Bytes(out, outBufSize)
	return k, nil
}

func (c *Client) put(k *call) {
	if k.lost {
		return
	}
	c.mu.Lock()
	c.free = append(c.free, k)
	c.mu.Unlock()
}

// ensureData gives k a data buffer of at least n bytes.
func (c *Client) ensureData(k *call, n uint64) error {
	if n <= k.dataCap {
		return nil
	}
	m := c.fe.Mem
	if k.dataCap > 0 {
		m.Free(k.data, k.dataCap)
		k.dataCap = 0
	}
	size := frontend.ClassSize(n)
	gpa, err := m.Alloc(size)
	if err != nil {
		return err
	}
	b, err := m.Bytes(gpa, size)
	if err != nil {
		m.Free(gpa, size)
		return err
	}
	k.data, k.dataB, k.dataCap = gpa, b, size
	return nil
}

// ProtocolError is a reply that breaks the FUSE or virtio-fs rules.
type ProtocolError struct {
	Opcode uint32
	Unique uint64
	Msg    string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("fuseclient: opcode %d unique %d: %s", e.Opcode, e.Unique, e.Msg)
}

// argsAfter returns the arguments right after the header, for argument
// structs go-fuse lacks.
func argsAfter[T any](k *call) *T { return (*T)(unsafe.Pointer(&k.inB[inHeaderSize])) }

// request returns a go-fuse In struct (which embeds the header) laid over
// the in buffer, zeroed.
func request[T any](k *call) *T {
	p := (*T)(unsafe.Pointer(&k.inB[0]))
	var zero T
	*p = zero
	return p
}

func sizeOf[T any]() int {
	var v T
	return int(unsafe.Sizeof(v))
}

// putName writes name and its NUL at off in the in buffer and returns the
// offset after it.
func putName(k *call, off int, name string) (int, error) {
	if off+len(name)+1 > len(k.inB) {
		return 0, fmt.Errorf("fuseclient: name of %d bytes too long", len(name))
	}
	copy(k.inB[off:], name)
	k.inB[off+len(name)] = 0
	return off + len(name) + 1, nil
}

func (c *Client) addData(k *call, gpa uint64, n int) {
	if !c.opts.SplitPages {
		k.bufs = append(k.bufs, virtqueue.Buffer{Addr: gpa, Len: uint32(n)})
		return
	}
	for n > 0 {
		l := min(n, pageSize)
		k.bufs = append(k.bufs, virtqueue.Buffer{Addr: gpa, Len: uint32(l)})
		gpa += uint64(l)
		n -= l
	}
}

// exchange describes one round trip.
type exchange struct {
	opcode uint32
	nodeid uint64
	inLen  int    // header + arguments (+ extensions) in the in buffer
	extLen uint16 // total_extlen: extension bytes at the end of inLen, in 8-byte units
	wlen   int    // data bytes from the data buffer after the arguments
	outArg int    // reply bytes in the out buffer after the header
	rlen   int    // reply data bytes into the data buffer
	hiprio bool   // one readable descriptor on queue 0, no reply
	nocred bool
	// emptyOK accepts a completion that wrote nothing as success: Linux
	// pre-zeroes the reply header, so a device that does not answer
	// (virtiofsd for DESTROY) looks like a success to it.
	emptyOK bool
	q       *frontend.Queue
}

// roundTrip fills the header, sends the chain and validates the reply
// header. It returns the reply payload length (after the header).
func (c *Client) roundTrip(k *call, x exchange) (int, error) {
	unique := c.unique.Add(2)
	q, err := c.encode(k, &x, unique)
	if err != nil {
		return 0, err
	}
	if err := q.Do(k.req); err != nil {
		if errors.Is(err, frontend.ErrTimeout) {
			k.lost = true
		}
		return 0, fmt.Errorf("fuseclient: opcode %d: %w", x.opcode, err)
	}
	return c.verify(k, x, unique)
}

// encode fills the header (with unique) and lays out k's chain for x; it
// returns the queue the request goes to (x.q, or the next request queue).
func (c *Client) encode(k *call, x *exchange, unique uint64) (*frontend.Queue, error) {
	h := (*fuse.InHeader)(unsafe.Pointer(&k.inB[0]))
	*h = fuse.InHeader{Length: uint32(x.inLen + x.wlen), Opcode: x.opcode, Unique: unique, NodeId: x.nodeid, TotalExtlen: x.extLen}
	if !x.nocred {
		h.Caller = c.opts.Caller
	}
	k.bufs = k.bufs[:0]
	q := x.q
	if x.hiprio {
		k.bufs = append(k.bufs, virtqueue.Buffer{Addr: k.in, Len: uint32(x.inLen)})
		k.req.Bufs, k.req.Readable = k.bufs, 1
		q = c.fe.Queue(0)
	} else {
		k.bufs = append(k.bufs, virtqueue.Buffer{Addr: k.in, Len: uint32(inHeaderSize)})
		if x.inLen > inHeaderSize {
			k.bufs = append(k.bufs, virtqueue.Buffer{Addr: k.in + uint64(inHeaderSize), Len: uint32(x.inLen - inHeaderSize)})
		}
		if x.wlen > 0 {
			c.addData(k, k.data, x.wlen)
		}
		readable := len(k.bufs)
		k.bufs = append(k.bufs, virtqueue.Buffer{Addr: k.out, Len: uint32(outHeaderSize)})
		if x.outArg > 0 {
			k.bufs = append(k.bufs, virtqueue.Buffer{Addr: k.out + uint64(outHeaderSize), Len: uint32(x.outArg)})
		}
		if x.rlen > 0 {
			c.addData(k, k.data, x.rlen)
		}
		k.req.Bufs, k.req.Readable = k.bufs, readable
		if q == nil {
			var err error
			if q, err = c.requestQueue(); err != nil {
				return nil, err
			}
		}
	}
	if q == nil {
		return nil, errors.New("fuseclient: no high-priority queue")
	}
	return q, nil
}

// verify checks the completion of k's chain for x, sent with unique, and
// returns the reply payload length.
func (c *Client) verify(k *call, x exchange, unique uint64) (int, error) {
	used := int(k.req.UsedLen)
	if x.hiprio {
		if used != 0 {
			return 0, &ProtocolError{x.opcode, unique, fmt.Sprintf("request without reply completed with used length %d", used)}
		}
		return 0, nil
	}
	if used == 0 && x.emptyOK {
		return 0, nil
	}
	if used < outHeaderSize {
		return 0, &ProtocolError{x.opcode, unique, fmt.Sprintf("used length %d is shorter than the reply header", used)}
	}
	oh := (*fuse.OutHeader)(unsafe.Pointer(&k.outB[0]))
	if oh.Unique != unique {
		return 0, &ProtocolError{x.opcode, unique, fmt.Sprintf("reply carries unique %d", oh.Unique)}
	}
	if int(oh.Length) != used {
		return 0, &ProtocolError{x.opcode, unique, fmt.Sprintf("reply header length %d but used length %d", oh.Length, used)}
	}
	if oh.Status != 0 {
		if oh.Status > 0 || oh.Status < -4095 {
			return 0, &ProtocolError{x.opcode, unique, fmt.Sprintf("reply status %d out of range", oh.Status)}
		}
		if used != outHeaderSize {
			return 0, &ProtocolError{x.opcode, unique, fmt.Sprintf("error reply %d carries %d payload bytes", oh.Status, used-outHeaderSize)}
		}
		return 0, syscall.Errno(-oh.Status)
	}
	return used - outHeaderSize, nil
}

// fixed checks a fixed-size reply.
func fixed(x exchange, n, want int, err error) error {
	if err != nil {
		return err
	}
	if n != want {
		return &ProtocolError{Opcode: x.opcode, Msg: fmt.Sprintf("reply payload is %d bytes, want %d", n, want)}
	}
	return nil
}

func outAs[T any](k *call) T { return *(*T)(unsafe.Pointer(&k.outB[outHeaderSize])) }

// simple runs a request whose reply has no payload.
func (c *Client) simple(k *call, x exchange) error {
	n, err := c.roundTrip(k, x)
	return fixed(x, n, 0, err)
}

func bufAt(gpa uint64, n int) virtqueue.Buffer { return virtqueue.Buffer{Addr: gpa, Len: uint32(n)} }
