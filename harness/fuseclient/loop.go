package fuseclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Loop keeps many requests in flight on one request queue from a single
// goroutine, an event loop built on frontend.Owner: encode requests into
// reusable Reqs, Submit them, Flush the batch (one lock, one kick at most),
// Reap the completions (replies validated as the typed calls validate
// them) and Wait when none is pending. Nothing is allocated per request
// and uniques are reserved in blocks, so loops on several queues share no
// cache line. The queue is the Loop's until Close; the typed calls must
// not use it meanwhile.
type Loop struct {
	c       *Client
	o       *frontend.Owner
	q       *frontend.Queue
	byHead  []*Req
	reqs    []*Req
	pending []*Req              // submitted, not flushed
	chains  []*frontend.Request // scratch for Flush
	reaped  []*frontend.Request // scratch for Reap
	uniq    uint64              // next reserved unique
	uniqEnd uint64
}

// uniqueBlock is how many uniques a Loop reserves at a time.
const uniqueBlock = 256

// Req is one reusable request of a Loop. Encode it with one of its
// methods (GetAttr, Lookup, Read, Write, ReaddirPlus, Create, Release,
// Unlink), Submit it, and read the reply through the accessors once Reap
// returned it.
type Req struct {
	// Tag is the caller's, e.g. an index into its own state.
	Tag int
	// N is the reply payload length once the request completed.
	N int
	// Err is the request's failure once it completed: an error reply (a
	// syscall.Errno) or a *ProtocolError.
	Err error

	l      *Loop
	k      *call
	x      exchange
	unique uint64
	busy   bool
}

// NewLoop takes request queue i (1..n) over; the caller's goroutine
// drives it until Close.
func (c *Client) NewLoop(i int) (*Loop, error) {
	q := c.fe.Queue(i)
	if i < 1 || q == nil {
		return nil, fmt.Errorf("fuseclient: no request queue %d", i)
	}
	o, err := q.Own()
	if err != nil {
		return nil, err
	}
	return &Loop{c: c, o: o, q: q, byHead: make([]*Req, q.Size())}, nil
}

// NewReq returns a request with its own guest buffers.
func (l *Loop) NewReq() (*Req, error) {
	k, err := l.c.get()
	if err != nil {
		return nil, err
	}
	r := &Req{l: l, k: k}
	l.reqs = append(l.reqs, r)
	l.pending = slices.Grow(l.pending, len(l.reqs))
	l.chains = slices.Grow(l.chains, len(l.reqs))
	l.reaped = slices.Grow(l.reaped, len(l.reqs))
	return r, nil
}

// InFlight returns how many requests are submitted and not back yet.
func (l *Loop) InFlight() int { return l.o.InFlight() + len(l.pending) }

// Busy reports whether r is submitted and not back yet.
func (r *Req) Busy() bool { return r.busy }

// Submit encodes r's header and queues it for the next Flush.
func (l *Loop) Submit(r *Req) error {
	if r.busy {
		return errors.New("fuseclient: request submitted while in flight")
	}
	if r.x.opcode == 0 {
		return errors.New("fuseclient: request submitted before it was encoded")
	}
	if l.uniq == l.uniqEnd {
		end := l.c.unique.Add(2 * uniqueBlock)
		l.uniq, l.uniqEnd = end-2*uniqueBlock+2, end+2
	}
	r.unique = l.uniq
	l.uniq += 2
	r.x.q = l.q
	if _, err := l.c.encode(r.k, &r.x, r.unique); err != nil {
		return err
	}
	r.busy, r.Err, r.N = true, nil, 0
	l.pending = append(l.pending, r)
	return nil
}

// Flush makes the submitted requests available to the device and
// notifies it if it asked for that.
func (l *Loop) Flush() error {
	if len(l.pending) == 0 {
		return nil
	}
	chains := l.chains[:0]
	for _, r := range l.pending {
		chains = append(chains, r.k.req)
	}
	n, err := l.o.Add(chains...)
	for i, r := range l.pending {
		if i < n {
			l.byHead[r.k.req.Head] = r
		} else {
			r.busy = false // not added
		}
	}
	l.pending = l.pending[:0]
	clear(chains)
	l.o.Kick()
	return err
}

// Reap appends the requests the device has returned to out, with N and
// Err set, and returns it. Its error is a completion that belongs to no
// request of the loop: the ring cannot be trusted any more.
func (l *Loop) Reap(out []*Req) ([]*Req, error) {
	done := l.o.Reap(l.reaped[:0])
	defer clear(done)
	for _, fr := range done {
		r := l.byHead[fr.Head]
		if r == nil || r.k.req != fr {
			return out, fmt.Errorf("fuseclient: queue %d completed head %d, which belongs to no loop request", l.q.Index(), fr.Head)
		}
		l.byHead[fr.Head] = nil
		r.busy = false
		r.N, r.Err = 0, fr.Err()
		if r.Err == nil {
			r.N, r.Err = l.c.verify(r.k, r.x, r.unique)
		}
		if r.Err == nil {
			switch {
			case r.x.rlen > 0 && r.N > r.x.rlen:
				r.Err = &ProtocolError{r.x.opcode, r.unique, fmt.Sprintf("%d bytes of data for %d asked", r.N, r.x.rlen)}
			case r.x.rlen == 0 && !r.x.emptyOK && r.N != r.x.outArg:
				r.Err = &ProtocolError{r.x.opcode, r.unique, fmt.Sprintf("reply payload is %d bytes, want %d", r.N, r.x.outArg)}
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// Wait flushes, then sleeps until the device signals a completion, unless
// one is already pending.
func (l *Loop) Wait() error {
	if err := l.Flush(); err != nil {
		return err
	}
	return l.o.Wait()
}

// Spin flushes, then polls the used ring for up to d, and reports whether
// a completion is pending: a loop may spin a little before it Waits.
func (l *Loop) Spin(d time.Duration) (bool, error) {
	if err := l.Flush(); err != nil {
		return false, err
	}
	if l.o.Pending() {
		return true, nil
	}
	if d <= 0 {
		return false, nil
	}
	end := time.Now().Add(d)
	for i := 0; ; i++ {
		if l.o.Pending() {
			return true, nil
		}
		if i%32 == 31 && time.Now().After(end) {
			return false, nil
		}
	}
}

// Close hands the queue back to the typed calls and frees the requests'
// buffers. Every submitted request must have come back.
func (l *Loop) Close() error {
	if len(l.pending) > 0 {
		return fmt.Errorf("fuseclient: loop closed with %d requests not flushed", len(l.pending))
	}
	if err := l.o.Release(); err != nil {
		return err
	}
	for _, r := range l.reqs {
		l.c.put(r.k)
	}
	l.reqs = nil
	return nil
}

// Encoders. Each lays a request out in r's guest buffers.

// GetAttr encodes GETATTR of nodeid.
func (r *Req) GetAttr(nodeid uint64) {
	request[fuse.GetAttrIn](r.k)
	r.x = exchange{opcode: OpGetattr, nodeid: nodeid, inLen: sizeOf[fuse.GetAttrIn](), outArg: attrOutSize}
}

// Lookup encodes LOOKUP of name in parent.
func (r *Req) Lookup(parent uint64, name string) error {
	end, err := putName(r.k, inHeaderSize, name)
	if err != nil {
		return err
	}
	r.x = exchange{opcode: OpLookup, nodeid: parent, inLen: end, outArg: entryOutSize}
	return nil
}

// Read encodes READ of n bytes at off through handle fh; the data stay in
// guest memory (Data).
func (r *Req) Read(nodeid, fh, off uint64, n int) error {
	if err := r.l.c.ensureData(r.k, uint64(n)); err != nil {
		return err
	}
	in := request[fuse.ReadIn](r.k)
	in.Fh, in.Offset, in.Size = fh, off, uint32(n)
	r.x = exchange{opcode: OpRead, nodeid: nodeid, inLen: sizeOf[fuse.ReadIn](), rlen: n}
	return nil
}

// Write encodes WRITE of n bytes at off through handle fh from r's guest
// data buffer, which holds the byte fill from its allocation on (or what
// an earlier Read left there).
func (r *Req) Write(nodeid, fh, off uint64, n int, fill byte) error {
	k := r.k
	old := k.dataCap
	if err := r.l.c.ensureData(k, uint64(n)); err != nil {
		return err
	}
	if k.dataCap != old {
		for i := range k.dataB {
			k.dataB[i] = fill
		}
	}
	in := request[fuse.WriteIn](k)
	in.Fh, in.Offset, in.Size = fh, off, uint32(n)
	r.x = exchange{opcode: OpWrite, nodeid: nodeid, inLen: sizeOf[fuse.WriteIn](), wlen: n, outArg: 8}
	return nil
}

// ReaddirPlus encodes READDIRPLUS of up to size bytes of entries from
// directory handle fh at cookie off (see NextDirentPlus to walk Data).
func (r *Req) ReaddirPlus(nodeid, fh, off uint64, size int) error {
	if err := r.l.c.ensureData(r.k, uint64(size)); err != nil {
		return err
	}
	in := request[fuse.ReadIn](r.k)
	in.Fh, in.Offset, in.Size = fh, off, uint32(size)
	r.x = exchange{opcode: OpReaddirplus, nodeid: nodeid, inLen: sizeOf[fuse.ReadIn](), rlen: size}
	return nil
}

// Create encodes CREATE of name in parent (with the empty security
// context Linux adds once SECURITY_CTX is negotiated).
func (r *Req) Create(parent uint64, name string, flags, mode uint32) error {
	c, k := r.l.c, r.k
	in := request[fuse.CreateIn](k)
	in.Flags, in.Mode, in.Umask = flags, mode, c.opts.Umask
	end, err := putName(k, sizeOf[fuse.CreateIn](), name)
	if err != nil {
		return err
	}
	end, ext := c.secctxExt(k, end)
	r.x = exchange{opcode: OpCreate, nodeid: parent, inLen: end, extLen: ext, outArg: entryOutSize + openOutSize}
	return nil
}

// Release encodes RELEASE of handle fh of nodeid.
func (r *Req) Release(nodeid, fh uint64, flags uint32) {
	in := request[fuse.ReleaseIn](r.k)
	in.Fh, in.Flags = fh, flags
	r.x = exchange{opcode: OpRelease, nodeid: nodeid, inLen: sizeOf[fuse.ReleaseIn]()}
}

// Unlink encodes UNLINK of name in parent.
func (r *Req) Unlink(parent uint64, name string) error {
	end, err := putName(r.k, inHeaderSize, name)
	if err != nil {
		return err
	}
	r.x = exchange{opcode: OpUnlink, nodeid: parent, inLen: end}
	return nil
}

// Reply accessors, valid once Next returned the request without error.

// Attr is a GETATTR reply.
func (r *Req) Attr() fuse.AttrOut { return outAs[fuse.AttrOut](r.k) }

// Entry is a LOOKUP or CREATE reply's entry.
func (r *Req) Entry() fuse.EntryOut { return outAs[fuse.EntryOut](r.k) }

// Open is a CREATE reply's open handle.
func (r *Req) Open() fuse.OpenOut { return outAs[fuse.CreateOut](r.k).OpenOut }

// Written is a WRITE reply's count.
func (r *Req) Written() uint32 { return outAs[fuse.WriteOut](r.k).Size }

// Data is a READ or READDIRPLUS reply's data, in guest memory.
func (r *Req) Data() []byte { return r.k.dataB[:r.N] }

// NextDirentPlus decodes the fuse_direntplus record at the start of b
// without allocating: the entry's node id (0 when the server did not look
// it up), its cookie, and the record's size (0 when b does not start with
// a well-formed record).
func NextDirentPlus(b []byte) (nodeid, cookie uint64, size int) {
	if len(b) < entryOutSize+direntSize {
		return 0, 0, 0
	}
	nodeid = binary.LittleEndian.Uint64(b)
	d := b[entryOutSize:]
	cookie = binary.LittleEndian.Uint64(d[8:])
	nl := int(binary.LittleEndian.Uint32(d[16:]))
	if nl == 0 || nl > 1024 || direntSize+nl > len(d) {
		return 0, 0, 0
	}
	return nodeid, cookie, min(entryOutSize+(direntSize+nl+7)&^7, len(b))
}
