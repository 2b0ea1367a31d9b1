package vhostuser

import (
	"encoding/binary"
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
type Device interface {
	// Features returns the device-specific virtio feature bits to offer.
	Features() uint64
	// MaxQueues returns how many queues the device serves, the first
	// being the high-priority queue.
	MaxQueues() int
	// Config returns the device configuration space for GET_CONFIG, or
	// nil when the device does not offer CONFIG.
	Config() []byte
	// NewHandler returns a chain handler for one worker goroutine. Each
	// handler keeps its own scratch state.
	NewHandler() Handler
	// Reset drops all device state: the driver is gone or starts over.
	Reset()
}

// Handler serves descriptor chains.
type Handler interface {
	// Handle serves one chain from queue index qi and returns how many
	// bytes it wrote into the chain's writable part.
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
func (b *Backend) handle(m *Message) (bool, error) {
	b.log.Debugf("vhost-user %v (%d bytes, %d fds)", m.Request, len(m.Payload), len(m.Fds))
	switch m.Request {
	case GetFeatures:
		return true, b.conn.ReplyU64(m.Request, b.offered)
	case SetFeatures:
		v, err := m.U64()
		if err != nil {
			return false, err
		}
		if v&^b.offered != 0 {
			return false, fmt.Errorf("front-end acked features %#x that were not offered", v&^b.offered)
		}
		b.acked = v
		b.dirty.on.Store(v&FeatureLogAll != 0)
		return false, nil
	case GetProtocolFeatures:
		return true, b.conn.ReplyU64(m.Request, b.offeredProtocol)
	case SetProtocolFeatures:
		v, err := m.U64()
		if err != nil {
			return false, err
		}
		if v&^b.offeredProtocol != 0 {
			return false, fmt.Errorf("front-end acked protocol features %#x that were not offered", v&^b.offeredProtocol)
		}
		b.ackedProtocol = v
		return false, nil
	case SetOwner:
		return false, nil
	case ResetOwner, ResetDevice:
		for _, v := range b.rings {
			v.reset()
		}
		b.acked = 0
		b.endTransfer()
		b.dev.Reset()
		return false, nil
	case GetQueueNum:
		return true, b.conn.ReplyU64(m.Request, uint64(len(b.rings)))
	case GetMaxMemSlots:
		return true, b.conn.ReplyU64(m.Request, b.opts.MaxMemSlots)
	case SetMemTable:
		return false, b.setMemTable(m)
	case AddMemReg:
		return false, b.addMemReg(m)
	case RemMemReg:
		return false, b.remMemReg(m)
	case SetVringNum, SetVringBase, SetVringEnable:
		idx, num, err := m.VringState()
		if err != nil {
			return false, err
		}
		v, err := b.ring(idx)
		if err != nil {
			return false, err
		}
		switch m.Request {
		case SetVringNum:
			return false, v.setNum(num)
		case SetVringBase:
			return false, v.setBase(num)
		default:
			return false, v.setEnable(num != 0)
		}
	case SetVringAddr:
		if len(m.Payload) < 40 {
			return false, fmt.Errorf("SET_VRING_ADDR payload is %d bytes, want 40", len(m.Payload))
		}
		v, err := b.ring(binary.LittleEndian.Uint32(m.Payload))
		if err != nil {
			return false, err
		}
		p := m.Payload
		v.setUsedLog(binary.LittleEndian.Uint32(p[4:]), binary.LittleEndian.Uint64(p[32:]))
		return false, v.setAddr(virtqueue.Addresses{
			Desc:  binary.LittleEndian.Uint64(p[8:]),
			Used:  binary.LittleEndian.Uint64(p[16:]),
			Avail: binary.LittleEndian.Uint64(p[24:]),
		})
	case GetVringBase:
		idx, _, err := m.VringState()
		if err != nil {
			return false, err
		}
		v, err := b.ring(idx)
		if err != nil {
			return false, err
		}
		base := v.stop()
		var out [8]byte
		binary.LittleEndian.PutUint32(out[0:], idx)
		binary.LittleEndian.PutUint32(out[4:], uint32(base))
		return true, b.conn.Reply(m.Request, out[:])
	case SetVringKick, SetVringCall, SetVringErr:
		arg, err := m.U64()
		if err != nil {
			return false, err
		}
		v, err := b.ring(uint32(arg & VringIndexMask))
		if err != nil {
			return false, err
		}
		fd := -1
		if arg&VringNoFd == 0 {
			if fd, err = m.TakeFd(); err != nil {
				return false, err
			}
			if err := notifierFd(fd); err != nil {
				unix.Close(fd)
				return false, fmt.Errorf("queue %d: %w", v.index, err)
			}
		}
		switch m.Request {
		case SetVringKick:
			return false, v.setKick(fd)
		case SetVringCall:
			v.setCall(fd)
		default:
			v.setErr(fd)
		}
		return false, nil
	case SetBackendReqFd:
		fd, err := m.TakeFd()
		if err != nil {
			return false, err
		}
		f, err := fdConn(fd)
		if err != nil {
			return false, err
		}
		b.channel.set(f, b.ackedProtocol&ProtocolReplyAck != 0)
		return false, nil
	case GetConfig:
		return true, b.getConfig(m)
	case GetShmemConfig:
		if len(b.opts.ShmemSizes) == 0 {
			return false, fmt.Errorf("GET_SHMEM_CONFIG without shared memory regions")
		}
		out := make([]byte, 8+8*256)
		n := min(len(b.opts.ShmemSizes), 256)
		binary.LittleEndian.PutUint32(out, uint32(n))
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint64(out[8+8*i:], b.opts.ShmemSizes[i])
		}
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

func (b *Backend) getConfig(m *Message) error {
	if len(m.Payload) < 12 {
		return b.conn.Reply(m.Request, nil)
	}
	off := binary.LittleEndian.Uint32(m.Payload[0:])
	size := binary.LittleEndian.Uint32(m.Payload[4:])
	out := make([]byte, 12+int(min(size, MaxPayload)))
	copy(out, m.Payload[:12])
	cfg := b.dev.Config()
	if uint64(off)+uint64(size) > uint64(len(cfg)) || 12+int(size) > len(out) {
		// QEMU treats a reply with size 0 as failure.
		binary.LittleEndian.PutUint32(out[4:], 0)
		return b.conn.Reply(m.Request, out[:12])
	}
	copy(out[12:], cfg[off:off+size])
	return b.conn.Reply(m.Request, out)
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

// decodeRegion reads one region description and maps it from fd, within
// Options.MaxMapped.
func (b *Backend) decodeRegion(p []byte, fd int) (*guestRegion, error) {
	r := virtqueue.Region{
		GuestAddr:  binary.LittleEndian.Uint64(p[0:]),
		Size:       binary.LittleEndian.Uint64(p[8:]),
		UserAddr:   binary.LittleEndian.Uint64(p[16:]),
		MmapOffset: binary.LittleEndian.Uint64(p[24:]),
	}
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

func (b *Backend) setMemTable(m *Message) error {
	if len(m.Payload) < 8 {
		return fmt.Errorf("SET_MEM_TABLE payload is %d bytes", len(m.Payload))
	}
	n := int(binary.LittleEndian.Uint32(m.Payload))
	if n > MaxFds || len(m.Payload) < 8+n*MemRegionSize || len(m.Fds) != n {
		return fmt.Errorf("SET_MEM_TABLE with %d regions, %d bytes and %d fds", n, len(m.Payload), len(m.Fds))
	}
	var regions []*guestRegion
	for i := 0; i < n; i++ {
		r, err := b.decodeRegion(m.Payload[8+i*MemRegionSize:], m.Fds[i])
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

func (b *Backend) addMemReg(m *Message) error {
	if len(m.Payload) < 8+MemRegionSize {
		return fmt.Errorf("ADD_MEM_REG payload is %d bytes", len(m.Payload))
	}
	fd, err := m.TakeFd()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if len(b.regions) >= int(b.opts.MaxMemSlots) {
		return fmt.Errorf("ADD_MEM_REG beyond %d memory slots", b.opts.MaxMemSlots)
	}
	r, err := b.decodeRegion(m.Payload[8:], fd)
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

func (b *Backend) remMemReg(m *Message) error {
	if len(m.Payload) < 8+MemRegionSize {
		return fmt.Errorf("REM_MEM_REG payload is %d bytes", len(m.Payload))
	}
	p := m.Payload[8:]
	ga, size, ua := binary.LittleEndian.Uint64(p[0:]), binary.LittleEndian.Uint64(p[8:]), binary.LittleEndian.Uint64(p[16:])
	var keep []*guestRegion
	found := false
	for _, r := range b.regions {
		if !found && r.GuestAddr == ga && r.Size == size && r.UserAddr == ua {
			found = true
			continue
		}
		keep = append(keep, r)
	}
	if !found {
		return fmt.Errorf("REM_MEM_REG: no region at guest address %#x size %#x", ga, size)
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
	h := b.dev.NewHandler()
	own := virtqueue.NewDescriptorChain(64)
	for v := range b.ready {
		v.serve(v.q, h, &own)
	}
}

// assistant serves the long chains handed to it.
func (b *Backend) assistant() {
	debug.SetPanicOnFault(true) // see fault
	h := b.dev.NewHandler()
	for w := range b.assist {
		b.assistOne(h, w)
	}
}

// assistOne serves and completes one chain handed to an assistant.
func (b *Backend) assistOne(h Handler, w work) {
	defer func() {
		if p := recover(); p != nil {
			w.v.fault(p)
		}
		w.mem.release()
		w.v.inflight.Done()
	}()
	w.v.complete(w.c, w.mem, h.Handle(w.v.index, w.c), true)
	w.v.recycle(w.c)
}
