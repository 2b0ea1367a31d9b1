package vhostuser

import (
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Device is the virtio device served behind the vhost-user plumbing.
//
// The back-end calls Features, MaxQueues and Config from NewBackend, and
// Config, NewHandler and Reset from Serve's control goroutine; those calls
// never overlap one another. Pool workers and assistants (Options) call
// NewHandler from their own goroutines when Serve starts, concurrently
// with each other and with the control goroutine. Descriptor chains are
// served by Handlers, concurrently with all of this (see Handler).
type Device interface {
	// Features returns the device-specific virtio feature bits to
	// offer, which the back-end adds to its own (VERSION_1,
	// INDIRECT_DESC, EVENT_IDX, PROTOCOL_FEATURES, and LOG_ALL for a
	// Migrator). It is called once, by NewBackend.
	Features() uint64
	// MaxQueues returns how many queues the device serves, at least 1,
	// the first being the high-priority queue (always served by a
	// worker of its own, never by the pool or an assistant). It is
	// called once, by NewBackend: the number is fixed for the
	// Backend's life, and GET_QUEUE_NUM reports it.
	MaxQueues() int
	// Config returns the device configuration space for GET_CONFIG, or
	// nil when the device does not offer CONFIG. NewBackend calls it to
	// decide whether to offer CONFIG, the control goroutine at each
	// GET_CONFIG, while chains are being served. The back-end only
	// reads the slice, during the call: it copies the range asked for
	// (or refuses a range past its end) and keeps nothing.
	Config() []byte
	// NewHandler returns a new chain handler for one worker goroutine,
	// with its own scratch state: a Handler is never shared between
	// goroutines that run at once. It is called once per pool worker
	// and per assistant when Serve starts (on the goroutine that will
	// use the handler), and on the control goroutine the first time
	// each ring that has a worker of its own starts; a ring keeps its
	// handler across restarts and Resets, for the Backend's life.
	NewHandler() Handler
	// Reset drops all device state: the driver is gone or starts over.
	// It is called on the control goroutine at RESET_OWNER and
	// RESET_DEVICE and when Serve ends, once every ring has stopped and
	// every chain in flight has completed, the parked ones included
	// (defer.go), so no Handle runs meanwhile;
	// a device state transfer still running is ended first (its pipe
	// closed and waited for, at most 10 s). Handlers made before stay
	// in use afterwards.
	Reset()
}

// Handler serves descriptor chains.
type Handler interface {
	// Handle serves one chain from queue index qi and returns how many
	// bytes it wrote into the chain's writable part, from its start: at
	// most c.WritableLen. That count is the used length the driver
	// reads and, while the front-end logs dirty pages (LOG_ALL), the
	// part of the writable segments logged as written.
	//
	// It runs on the goroutine its handler was made for (NewHandler): a
	// ring's own worker, locked to its OS thread, or a pool worker or
	// assistant, not locked (a handler locks the thread itself around
	// changes of thread state: credentials, umask, working directory).
	// One Handler is never called concurrently with itself, but
	// different Handlers run at once, on different queues and, with a
	// pool or assistants, on chains of the same queue.
	//
	// c and its segments belong to the back-end and are valid only
	// during the call: the segments are guest memory, which the guest
	// may change while Handle reads it (copy what must be checked
	// before use) and the front-end may remap after it returns; the
	// chain itself is reused for the next one. Handle must keep neither.
	//
	// Guest memory may fault (the front-end shrank its file): Handle
	// runs with debug.SetPanicOnFault, and a fault is a panic, which
	// the back-end recovers, marking the ring broken until the
	// front-end starts it again. A Handle that holds locks or state
	// across guest memory accesses must let them go in a defer, or
	// recover the fault itself. Any other panic crashes the daemon.
	//
	// Handle may block (on the back-end channel, Backend.ShmemMap and
	// the like): meanwhile its worker serves nothing else, and a
	// GET_VRING_BASE stopping the ring waits for it. A wait with no
	// bound (a lock) parks the chain instead (DeferringHandler).
	Handle(qi int, c *virtqueue.DescriptorChain) uint32
}

// Options tune a Backend.
type Options struct {
	// ThreadPoolSize is virtiofsd's --thread-pool-size: 0 serves each
	// request queue on its own worker; with N > 0 a pool of N workers
	// takes the request queues' chains off their rings (vring.serve). The
	// high-priority queue is always served on its own worker.
	ThreadPoolSize int
	// MaxMemSlots is what GET_MAX_MEM_SLOTS reports.
	MaxMemSlots uint64
	// Log receives the back-end's messages; nil means logrus's standard
	// logger.
	Log logrus.FieldLogger
	// ShmemSizes are the device's shared memory regions (the DAX window
	// is region 0). When set, the back-end offers SHMEM and answers
	// GET_SHMEM_CONFIG with them.
	ShmemSizes []uint64
	// Assistants serve long chains of the request queues: a chain carrying
	// at least AssistMin bytes to the device, with more chains waiting
	// behind it, goes to an idle assistant, and the queue's worker (or the
	// pool) serves the next chains meanwhile. When none is idle the chain
	// is served as any other. 0 means none.
	Assistants int
	// Poll is how long a request queue's worker that emptied its ring keeps
	// polling it before it asks for kicks again and sleeps. While it
	// polls the driver need not kick at all. 0 sleeps at once.
	Poll time.Duration
	// MaxMapped bounds the bytes of guest memory mapped at once, over
	// every memory layout still held (a region of a replaced layout
	// stays mapped while a worker uses it): a memory region past it is
	// refused. Each region is mapped whole, from offset 0 of its file,
	// so its mmap offset counts too. 0 means DefaultMaxMapped.
	MaxMapped uint64
	// MaxDeferred bounds the chains parked at once over every ring (see
	// defer.go): past it Parker.Park refuses. 0 means DefaultMaxDeferred.
	MaxDeferred int
}

// DefaultMaxMapped is Options.MaxMapped's default, 16 TiB: beyond any
// guest's RAM, yet it leaves most of the 128 TiB address space to the
// daemon (a front-end's sparse regions, each within bounds, could
// otherwise take all of it, and the next heap growth would fail).
const DefaultMaxMapped = 1 << 44

const offeredProtocol = ProtocolMQ | ProtocolReplyAck | ProtocolBackendReq | ProtocolBackendSendFd |
	ProtocolResetDevice | ProtocolConfigureMemSlots

// Backend is the back-end side of one vhost-user connection.
type Backend struct {
	dev  Device
	opts Options
	log  logrus.FieldLogger
	conn *Conn

	offered         uint64
	acked           uint64
	offeredProtocol uint64
	ackedProtocol   uint64

	// mem is the current memory layout; regions is the control
	// goroutine's copy of its region list.
	mem     atomic.Pointer[memState]
	regions []*guestRegion
	mapped  atomic.Uint64 // bytes mapped, of every region not unmapped yet

	rings  []*vring
	ready  chan *vring // rings for the thread pool, each with its token (vring.serve)
	assist chan work   // unbuffered: a send succeeds only to an idle assistant

	channel backendChannel

	// Parked chains over every ring (defer.go), and Parks refused.
	parkedAll   atomic.Int64
	parkRefused atomic.Uint64

	// Migration (dirtylog.go, migrate.go).
	dirty logState
	xfer  *transfer
}

// NewBackend returns a back-end serving dev.
func NewBackend(dev Device, opts Options) *Backend {
	if opts.MaxMemSlots == 0 {
		opts.MaxMemSlots = 509
	}
	if opts.MaxMapped == 0 {
		opts.MaxMapped = DefaultMaxMapped
	}
	if opts.MaxDeferred <= 0 {
		opts.MaxDeferred = DefaultMaxDeferred
	}
	b := &Backend{dev: dev, opts: opts, log: opts.Log}
	if b.log == nil {
		b.log = logrus.StandardLogger()
	}
	b.offered = FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx | FeatureProtocolFeatures | dev.Features()
	b.offeredProtocol = offeredProtocol
	if dev.Config() != nil {
		b.offeredProtocol |= ProtocolConfig
	}
	if len(opts.ShmemSizes) > 0 {
		b.offeredProtocol |= ProtocolShmem
	}
	b.offerMigration()
	b.rings = make([]*vring, dev.MaxQueues())
	for i := range b.rings {
		b.rings[i] = newVring(b, i)
	}
	return b
}

// Serve runs the control loop on uc until the front-end disconnects. It
// returns nil on an orderly disconnect.
func (b *Backend) Serve(uc *net.UnixConn) error {
	b.conn = NewConn(uc)
	if b.opts.ThreadPoolSize > 0 {
		// Each ring is in it at most once, so sends never block.
		b.ready = make(chan *vring, len(b.rings))
		for i := 0; i < b.opts.ThreadPoolSize; i++ {
			go b.poolWorker()
		}
	}
	if b.opts.Assistants > 0 {
		b.assist = make(chan work)
		for i := 0; i < b.opts.Assistants; i++ {
			go b.assistant()
		}
	}
	defer func() {
		b.shutdown()
		if b.ready != nil {
			close(b.ready)
		}
		if b.assist != nil {
			close(b.assist)
		}
	}()
	for {
		m, err := b.conn.Read()
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return nil
			}
			return fmt.Errorf("read vhost-user message: %w", err)
		}
		reply, err := b.handle(m)
		m.CloseFds()
		if err != nil {
			b.log.Errorf("%v failed: %v", m.Request, err)
		}
		if reply {
			continue
		}
		if m.NeedsReply() && b.ackedProtocol&ProtocolReplyAck != 0 {
			status := uint64(0)
			if err != nil {
				status = 1
			}
			if werr := b.conn.ReplyU64(m.Request, status); werr != nil {
				return fmt.Errorf("reply to %v: %w", m.Request, werr)
			}
		}
	}
}

func (b *Backend) shutdown() {
	for _, v := range b.rings {
		v.reset()
	}
	b.stopMigration()
	b.dev.Reset()
	b.setMemory(nil)
	b.channel.set(nil, false)
}

// handle processes one message. It reports whether it already replied.
// It only dispatches: the payload is decoded into its type (payload.go),
// the request's method does the work, and a reply body is encoded here.
func (b *Backend) handle(m *Message) (bool, error) {
	b.log.Debugf("vhost-user %v (%d bytes, %d fds)", m.Request, len(m.Payload), len(m.Fds))
	switch m.Request {
	case GetFeatures:
		return true, b.conn.ReplyU64(m.Request, b.offered)
	case SetFeatures:
		v, err := decodeMsg[U64](m)
		if err != nil {
			return false, err
		}
		return false, b.setFeatures(v.Value)
	case GetProtocolFeatures:
		return true, b.conn.ReplyU64(m.Request, b.offeredProtocol)
	case SetProtocolFeatures:
		v, err := decodeMsg[U64](m)
		if err != nil {
			return false, err
		}
		return false, b.setProtocolFeatures(v.Value)
	case SetOwner:
		return false, nil
	case ResetOwner, ResetDevice:
		b.resetDevice()
		return false, nil
	case GetQueueNum:
		return true, b.conn.ReplyU64(m.Request, uint64(len(b.rings)))
	case GetMaxMemSlots:
		return true, b.conn.ReplyU64(m.Request, b.opts.MaxMemSlots)
	case SetMemTable:
		t, err := m.memoryTable()
		if err != nil {
			return false, err
		}
		return false, b.setMemTable(t, m.Fds)
	case AddMemReg:
		r, fd, err := decodeWithFd[SingleMemoryRegion](m)
		if err != nil {
			return false, err
		}
		return false, b.addMemReg(r.Region, fd)
	case RemMemReg:
		r, err := decodeMsg[SingleMemoryRegion](m)
		if err != nil {
			return false, err
		}
		return false, b.remMemReg(r.Region)
	case SetVringNum:
		s, v, err := decodeRing[VringState](b, m)
		if err != nil {
			return false, err
		}
		return false, v.setNum(s.Num)
	case SetVringBase:
		s, v, err := decodeRing[VringState](b, m)
		if err != nil {
			return false, err
		}
		return false, v.setBase(s.Num)
	case SetVringEnable:
		s, v, err := decodeRing[VringState](b, m)
		if err != nil {
			return false, err
		}
		return false, v.setEnable(s.Num != 0)
	case SetVringAddr:
		a, v, err := decodeRing[VringAddr](b, m)
		if err != nil {
			return false, err
		}
		return false, v.setVringAddr(a)
	case GetVringBase:
		s, v, err := decodeRing[VringState](b, m)
		if err != nil {
			return false, err
		}
		var out [VringStateSize]byte
		VringState{Index: s.Index, Num: uint32(v.stop())}.Put(out[:])
		return true, b.conn.Reply(m.Request, out[:])
	case SetVringKick, SetVringCall, SetVringErr:
		f, v, err := decodeRing[VringFd](b, m)
		if err != nil {
			return false, err
		}
		fd := -1
		if !f.NoFd {
			if fd, err = m.TakeFd(); err != nil {
				return false, err
			}
		}
		return false, v.setVringFd(m.Request, fd)
	case SetBackendReqFd:
		fd, err := m.TakeFd()
		if err != nil {
			return false, err
		}
		return false, b.setBackendReqFd(fd)
	case GetConfig:
		c, err := decodeMsg[ConfigSpace](m)
		if err != nil {
			// Too short to say what it asks: an empty reply.
			return true, b.conn.Reply(m.Request, nil)
		}
		return true, b.conn.Reply(m.Request, b.getConfig(c))
	case GetShmemConfig:
		if len(b.opts.ShmemSizes) == 0 {
			return false, fmt.Errorf("GET_SHMEM_CONFIG without shared memory regions")
		}
		out := make([]byte, ShmemConfigSize)
		b.shmemConfig().Put(out)
		return true, b.conn.Reply(m.Request, out)
	case SetConfig:
		return false, nil
	default:
		if ok, replied, err := b.handleMigration(m); ok {
			return replied, err
		}
		return false, fmt.Errorf("unsupported request %v", m.Request)
	}
}

func (b *Backend) ring(idx uint32) (*vring, error) {
	if idx >= uint32(len(b.rings)) {
		return nil, fmt.Errorf("ring index %d out of range (device has %d queues)", idx, len(b.rings))
	}
	return b.rings[idx], nil
}

// setFeatures acks the virtio features v (SET_FEATURES).
func (b *Backend) setFeatures(v uint64) error {
	if v&^b.offered != 0 {
		return fmt.Errorf("front-end acked features %#x that were not offered", v&^b.offered)
	}
	b.acked = v
	b.dirty.on.Store(v&FeatureLogAll != 0)
	return nil
}

// setProtocolFeatures acks the protocol features v.
func (b *Backend) setProtocolFeatures(v uint64) error {
	if v&^b.offeredProtocol != 0 {
		return fmt.Errorf("front-end acked protocol features %#x that were not offered", v&^b.offeredProtocol)
	}
	b.ackedProtocol = v
	return nil
}

// resetDevice stops every ring and resets the device (RESET_OWNER,
// RESET_DEVICE).
func (b *Backend) resetDevice() {
	for _, v := range b.rings {
		v.reset()
	}
	b.acked = 0
	b.endTransfer()
	b.dev.Reset()
}

// setVringAddr sets the ring's addresses and its used ring's log address.
func (v *vring) setVringAddr(a VringAddr) error {
	v.setUsedLog(a)
	return v.setAddr(virtqueue.Addresses{Desc: a.Descriptor, Used: a.Used, Avail: a.Available})
}

// setVringFd installs fd, taken from a SET_VRING_KICK, SET_VRING_CALL or
// SET_VRING_ERR (req), or -1 when it carried none. The ring owns fd from
// here on, even when it is refused.
func (v *vring) setVringFd(req Request, fd int) error {
	if fd >= 0 {
		if err := notifierFd(fd); err != nil {
			unix.Close(fd)
			return fmt.Errorf("queue %d: %w", v.index, err)
		}
	}
	switch req {
	case SetVringKick:
		return v.setKick(fd)
	case SetVringCall:
		v.setCall(fd)
	default:
		v.setErr(fd)
	}
	return nil
}

// setBackendReqFd makes fd, which it owns from here on, the back-end
// channel.
func (b *Backend) setBackendReqFd(fd int) error {
	f, err := fdConn(fd)
	if err != nil {
		return err
	}
	b.channel.set(f, b.ackedProtocol&ProtocolReplyAck != 0)
	return nil
}

// getConfig returns GET_CONFIG's reply to a request for c: c echoed, then
// the bytes asked for, or c with size 0 (QEMU reads a reply with size 0 as
// a refusal) when they are not in the configuration space.
func (b *Backend) getConfig(c ConfigSpace) []byte {
	out := make([]byte, ConfigSpaceSize+int(min(c.Size, MaxPayload)))
	cfg := b.dev.Config()
	if uint64(c.Offset)+uint64(c.Size) > uint64(len(cfg)) || ConfigSpaceSize+int(c.Size) > len(out) {
		c.Size = 0
		c.Put(out)
		return out[:ConfigSpaceSize]
	}
	c.Put(out)
	copy(out[ConfigSpaceSize:], cfg[c.Offset:c.Offset+c.Size])
	return out
}

// shmemConfig is GET_SHMEM_CONFIG's reply: the first MaxShmemRegions of
// Options.ShmemSizes.
func (b *Backend) shmemConfig() ShmemConfig {
	var c ShmemConfig
	c.NumRegions = uint32(copy(c.Sizes[:], b.opts.ShmemSizes))
	return c
}

func fdConn(fd int) (*Conn, error) {
	f := fileFromFd(fd, "backend-req")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("back-end channel: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("back-end channel is not a unix socket")
	}
	return NewConn(uc), nil
}

// mapRegion maps r from fd, within Options.MaxMapped. fd stays the
// caller's.
func (b *Backend) mapRegion(mr MemoryRegion, fd int) (*guestRegion, error) {
	r := virtqueue.Region{GuestAddr: mr.GuestAddr, Size: mr.Size, UserAddr: mr.UserAddr, MmapOffset: mr.MmapOffset}
	// Only the control goroutine maps, so the count can only fall
	// between the check and the addition.
	size := r.MmapOffset + r.Size
	if mapped := b.mapped.Load(); size < r.Size || size > b.opts.MaxMapped || mapped > b.opts.MaxMapped-size {
		return nil, fmt.Errorf("memory region at guest address %#x: %#x bytes to map with %#x mapped would pass the limit of %#x", r.GuestAddr, size, mapped, b.opts.MaxMapped)
	}
	m, err := virtqueue.MapRegion(r, fd)
	if err != nil {
		return nil, err
	}
	b.mapped.Add(size)
	return &guestRegion{MappedRegion: m, mapped: &b.mapped}, nil
}

// setMemTable replaces the memory layout by t, region i mapped from
// fds[i] (which stay the message's).
func (b *Backend) setMemTable(t MemoryTable, fds []int) error {
	var regions []*guestRegion
	for i, mr := range t.Regions {
		r, err := b.mapRegion(mr, fds[i])
		if err != nil {
			unmapAll(regions)
			return err
		}
		regions = append(regions, r)
	}
	if err := b.setMemory(regions); err != nil {
		unmapAll(regions)
		return err
	}
	return nil
}

// addMemReg adds region mr, mapped from fd, which it closes.
func (b *Backend) addMemReg(mr MemoryRegion, fd int) error {
	defer unix.Close(fd)
	if len(b.regions) >= int(b.opts.MaxMemSlots) {
		return fmt.Errorf("ADD_MEM_REG beyond %d memory slots", b.opts.MaxMemSlots)
	}
	r, err := b.mapRegion(mr, fd)
	if err != nil {
		return err
	}
	regions := append(append([]*guestRegion(nil), b.regions...), r)
	if err := b.setMemory(regions); err != nil {
		r.unmap()
		return err
	}
	return nil
}

// remMemReg removes the region at mr's guest address, size and user
// address (its mmap offset is not compared).
func (b *Backend) remMemReg(mr MemoryRegion) error {
	var keep []*guestRegion
	found := false
	for _, r := range b.regions {
		if !found && r.GuestAddr == mr.GuestAddr && r.Size == mr.Size && r.UserAddr == mr.UserAddr {
			found = true
			continue
		}
		keep = append(keep, r)
	}
	if !found {
		return fmt.Errorf("REM_MEM_REG: no region at guest address %#x size %#x", mr.GuestAddr, mr.Size)
	}
	return b.setMemory(keep)
}

// setMemory installs a new region set. Workers move to it at their next
// chain, idle rings at once; a region that is gone is unmapped once no
// layout that maps it is held (see memstate.go).
func (b *Backend) setMemory(regions []*guestRegion) error {
	var next *memState
	if len(regions) > 0 {
		var err error
		if next, err = newMemState(regions); err != nil {
			return err
		}
	}
	b.regions = regions
	keep := make(map[*guestRegion]bool, len(regions))
	for _, r := range regions {
		keep[r] = true
	}
	for _, v := range b.rings {
		v.cancelUnmapped(keep)
	}
	old := b.mem.Swap(next)
	if next != nil {
		for _, v := range b.rings {
			if v.running {
				v.rebind(v.q, next)
			}
		}
	}
	if old != nil {
		old.release()
	}
	return nil
}

// unmapAll unmaps regions that are in no layout.
func unmapAll(rs []*guestRegion) {
	for _, r := range rs {
		r.unmap()
	}
}

// work is one chain handed to an assistant.
type work struct {
	v   *vring
	c   *virtqueue.DescriptorChain
	mem *memState // keeps the chain's memory mapped
}

// Pool workers and assistants are not locked to their OS threads: they
// sleep on a channel whenever they run out of work, and a locked goroutine
// would hand its P and thread off each time (handlers lock the thread
// themselves around credential, umask and working-directory changes).

// poolWorker serves the rings the pool receives (see vring.serve).
func (b *Backend) poolWorker() {
	debug.SetPanicOnFault(true) // see fault
	p := newParker(b.dev.NewHandler())
	own := virtqueue.NewDescriptorChain(64)
	for v := range b.ready {
		v.serve(v.q, p, &own)
	}
}

// assistant serves the long chains handed to it.
func (b *Backend) assistant() {
	debug.SetPanicOnFault(true) // see fault
	p := newParker(b.dev.NewHandler())
	for w := range b.assist {
		b.assistOne(p, w)
	}
}

// assistOne serves and completes one chain handed to an assistant.
func (b *Backend) assistOne(p *Parker, w work) {
	defer func() {
		if p := recover(); p != nil {
			w.v.fault(p)
		}
		w.mem.release()
		w.v.inflight.Done()
	}()
	p.own = nil
	if n, ok := p.handle(w.v, w.c, w.mem); ok {
		w.v.complete(w.c, w.mem, n, true)
		w.v.recycle(w.c)
	}
}
