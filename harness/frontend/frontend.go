package frontend

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// Options configure a Frontend.
type Options struct {
	// Memory lays out guest RAM (256 MiB in one region by default).
	Memory MemoryLayout
	// AddMemReg registers the regions one by one with ADD_MEM_REG (needs
	// CONFIGURE_MEM_SLOTS) instead of one SET_MEM_TABLE.
	AddMemReg bool
	// RequestQueues is the number of request queues to start besides the
	// high-priority queue 0; 1 when 0.
	RequestQueues int
	// QueueSize is every queue's size, a power of two; 128 (QEMU's
	// default) when 0.
	QueueSize uint16
	// NoIndirect and NoEventIdx leave INDIRECT_DESC and EVENT_IDX out of
	// SET_FEATURES even when the back-end offers them.
	NoIndirect bool
	NoEventIdx bool
	// ProtocolFeatures are the protocol features to ack where offered;
	// 0 means QEMU's set (DefaultProtocolFeatures).
	ProtocolFeatures uint64
	// NoNeedReply sends requests without NEED_REPLY even when REPLY_ACK
	// is negotiated.
	NoNeedReply bool
	// Poll reaps completions by polling the used rings instead of
	// sleeping on the call eventfds.
	Poll bool
	// AlwaysKick notifies the device after every submission, ignoring
	// its notification suppression.
	AlwaysKick bool
	// WindowSize is the size of the DAX window (shmid 0) served on the
	// back-end channel; 0 means no window.
	WindowSize uint64
	// Timeout bounds every wait for a control reply or a completion;
	// 30 s when 0, no bound when negative.
	Timeout time.Duration
}

// DefaultProtocolFeatures is what QEMU 10's vhost-user-fs acks when
// offered.
const DefaultProtocolFeatures = vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck | vhostuser.ProtocolBackendReq |
	vhostuser.ProtocolBackendSendFd | vhostuser.ProtocolConfigureMemSlots | vhostuser.ProtocolResetDevice |
	vhostuser.ProtocolConfig

// wantedFeatures are the virtio features acked where offered.
const wantedFeatures = vhostuser.FeatureVersion1 | vhostuser.FeatureIndirectDesc | vhostuser.FeatureEventIdx |
	vhostuser.FeatureProtocolFeatures

// Negotiated is what feature negotiation produced.
type Negotiated struct {
	OfferedFeatures uint64 // GET_FEATURES
	Features        uint64 // SET_FEATURES
	OfferedProtocol uint64 // GET_PROTOCOL_FEATURES
	Protocol        uint64 // SET_PROTOCOL_FEATURES
	QueueNum        uint64 // GET_QUEUE_NUM, 0 without MQ
	MaxMemSlots     uint64 // GET_MAX_MEM_SLOTS, 0 without CONFIGURE_MEM_SLOTS
}

// VringBase is a queue's state at stop: the GET_VRING_BASE answer and the
// available index the driver had published.
type VringBase struct {
	Index int
	Base  uint16 // GET_VRING_BASE: the next available entry the device will consume
	Avail uint16 // the driver's available index
	Used  uint16 // the device's used index right after the reply
}

// Frontend is one vhost-user front-end connection: control channel, guest
// RAM, queues and back-end channel.
type Frontend struct {
	opts Options
	uc   *net.UnixConn
	conn *vhostuser.Conn

	ctlMu sync.Mutex // serialises control-channel exchanges

	// Mem is the guest RAM.
	Mem *GuestMemory

	neg      Negotiated
	indirect bool
	eventIdx bool
	queues   []*Queue
	backend  *BackendServer
	window   *Window

	proc   *daemon.Proc
	tmpDir string

	started bool
	paused  bool
	stopped bool
	closed  bool
	bases   []VringBase
}

func (o *Options) fill() {
	if o.RequestQueues == 0 {
		o.RequestQueues = 1
	}
	if o.QueueSize == 0 {
		o.QueueSize = 128
	}
	if o.ProtocolFeatures == 0 {
		o.ProtocolFeatures = DefaultProtocolFeatures
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
}

// Connect connects to a back-end's socket and allocates guest RAM, without
// negotiating anything: the starting point of raw and hostile tests. Setup
// does the rest.
func Connect(socket string, opts Options) (*Frontend, error) {
	opts.fill()
	if q := opts.QueueSize; q == 0 || q&(q-1) != 0 || q > 32768 {
		return nil, fmt.Errorf("frontend: queue size %d is not a power of two", q)
	}
	var uc *net.UnixConn
	var err error
	for i := 0; ; i++ {
		uc, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
		if err == nil || i >= 50 || !(errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("frontend: connecting to %s: %w", socket, err)
	}
	mem, err := NewGuestMemory(opts.Memory)
	if err != nil {
		uc.Close()
		return nil, err
	}
	return &Frontend{opts: opts, uc: uc, conn: vhostuser.NewConn(uc), Mem: mem}, nil
}

// Dial connects to a back-end's socket and sets the device up (Setup).
func Dial(socket string, opts Options) (*Frontend, error) {
	f, err := Connect(socket, opts)
	if err != nil {
		return nil, err
	}
	if err := f.Setup(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Start starts the back-end d on a fresh socket (dopts.Socket, or one in a
// new temporary folder when empty), then Dials it. Close disconnects and
// reports the back-end's exit status.
func Start(d daemon.Daemon, dopts daemon.Options, opts Options) (*Frontend, error) {
	tmp := ""
	if dopts.Socket == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "frontend-"); err != nil {
			return nil, err
		}
		dopts.Socket = filepath.Join(tmp, "vhost-user-fs.sock")
	}
	proc, err := d.Start(dopts)
	if err != nil {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
		return nil, err
	}
	f, err := Connect(dopts.Socket, opts)
	if err == nil {
		f.proc, f.tmpDir = proc, tmp
		if err = f.Setup(); err != nil {
			f.Close()
		}
	}
	if err != nil {
		proc.Stop()
		if tmp != "" {
			os.RemoveAll(tmp)
		}
		return nil, fmt.Errorf("%w; %s output:\n%s", err, d.Name, proc.Stderr())
	}
	return f, nil
}

// Proc returns the back-end process when Start started it.
func (f *Frontend) Proc() *daemon.Proc { return f.proc }

// Negotiated returns the negotiation results.
func (f *Frontend) Negotiated() Negotiated { return f.neg }

// Queue returns queue i (0 is the high-priority queue), or nil.
func (f *Frontend) Queue(i int) *Queue {
	if i < 0 || i >= len(f.queues) {
		return nil
	}
	return f.queues[i]
}

// NumQueues returns how many queues are started, the high-priority queue
// included.
func (f *Frontend) NumQueues() int { return len(f.queues) }

// Backend returns the back-end channel server, or nil when the back-end
// did not offer BACKEND_REQ.
func (f *Frontend) Backend() *BackendServer { return f.backend }

// Window returns the DAX window, or nil.
func (f *Frontend) Window() *Window { return f.window }

// Setup negotiates, registers memory and starts the queues.
func (f *Frontend) Setup() error {
	if err := f.Negotiate(); err != nil {
		return err
	}
	if err := f.RegisterMemory(); err != nil {
		return err
	}
	return f.StartQueues()
}

func u64(v uint64) []byte { return vhostuser.Encode(vhostuser.U64{Value: v}) }

func vringState(index, num uint32) []byte {
	return vhostuser.Encode(vhostuser.VringState{Index: index, Num: num})
}

// vringFd is the body of SET_VRING_KICK, CALL and ERR for queue index, with
// a descriptor.
func vringFd(index uint32) []byte { return vhostuser.Encode(vhostuser.VringFd{Index: index}) }

// memoryRegion is r in the wire's terms.
func memoryRegion(r virtqueue.Region) vhostuser.MemoryRegion {
	return vhostuser.MemoryRegion{GuestAddr: r.GuestAddr, Size: r.Size, UserAddr: r.UserAddr, MmapOffset: r.MmapOffset}
}

// Negotiate runs QEMU 10's start-up sequence: GET_FEATURES,
// GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS,
// SET_BACKEND_REQ_FD, SET_OWNER, SET_FEATURES.
func (f *Frontend) Negotiate() error {
	var err error
	if f.neg.OfferedFeatures, err = f.CallU64(vhostuser.GetFeatures, nil); err != nil {
		return err
	}
	feats := f.neg.OfferedFeatures & wantedFeatures
	if f.opts.NoIndirect {
		feats &^= vhostuser.FeatureIndirectDesc
	}
	if f.opts.NoEventIdx {
		feats &^= vhostuser.FeatureEventIdx
	}
	if feats&vhostuser.FeatureVersion1 == 0 {
		return fmt.Errorf("frontend: back-end offers features %#x without VERSION_1", f.neg.OfferedFeatures)
	}
	if f.neg.OfferedFeatures&vhostuser.FeatureProtocolFeatures != 0 {
		if f.neg.OfferedProtocol, err = f.CallU64(vhostuser.GetProtocolFeatures, nil); err != nil {
			return err
		}
		f.neg.Protocol = f.neg.OfferedProtocol & f.opts.ProtocolFeatures
		// REPLY_ACK is not in force until the back-end has processed
		// this very message, so it is sent without NEED_REPLY (as QEMU
		// does).
		if err := f.Send(vhostuser.SetProtocolFeatures, vhostuser.FlagVersion, u64(f.neg.Protocol)); err != nil {
			return err
		}
	}
	if f.neg.Protocol&vhostuser.ProtocolMQ != 0 {
		if f.neg.QueueNum, err = f.CallU64(vhostuser.GetQueueNum, nil); err != nil {
			return err
		}
		if f.neg.QueueNum < uint64(1+f.opts.RequestQueues) {
			return fmt.Errorf("frontend: back-end serves %d queues, %d request queues need %d",
				f.neg.QueueNum, f.opts.RequestQueues, 1+f.opts.RequestQueues)
		}
	}
	if f.neg.Protocol&vhostuser.ProtocolConfigureMemSlots != 0 {
		if f.neg.MaxMemSlots, err = f.CallU64(vhostuser.GetMaxMemSlots, nil); err != nil {
			return err
		}
	}
	if f.neg.Protocol&vhostuser.ProtocolBackendReq != 0 {
		if err := f.setupBackendChannel(); err != nil {
			return err
		}
	}
	if err := f.Request(vhostuser.SetOwner, nil); err != nil {
		return err
	}
	if err := f.Request(vhostuser.SetFeatures, u64(feats)); err != nil {
		return err
	}
	f.neg.Features = feats
	f.indirect = feats&vhostuser.FeatureIndirectDesc != 0
	f.eventIdx = feats&vhostuser.FeatureEventIdx != 0
	return nil
}

func (f *Frontend) setupBackendChannel() error {
	conn, peer, err := Socketpair()
	if err != nil {
		return err
	}
	defer peer.Close()
	var windows []*Window
	if f.opts.WindowSize > 0 {
		if f.window, err = NewWindow(f.opts.WindowSize); err != nil {
			conn.Close()
			return err
		}
		windows = append(windows, f.window)
	}
	if err := f.Request(vhostuser.SetBackendReqFd, nil, int(peer.Fd())); err != nil {
		conn.Close()
		return err
	}
	f.backend = NewBackendServer(conn, windows...)
	go f.backend.Serve()
	return nil
}

// MemTablePayload encodes a SET_MEM_TABLE body for regions.
func MemTablePayload(regions []virtqueue.Region) []byte {
	t := vhostuser.MemoryTable{Regions: make([]vhostuser.MemoryRegion, len(regions))}
	for i, r := range regions {
		t.Regions[i] = memoryRegion(r)
	}
	return vhostuser.Encode(t)
}

// MemRegPayload encodes an ADD_MEM_REG / REM_MEM_REG body.
func MemRegPayload(r virtqueue.Region) []byte {
	return vhostuser.Encode(vhostuser.SingleMemoryRegion{Region: memoryRegion(r)})
}

// RegisterMemory shares guest RAM: one SET_MEM_TABLE, or ADD_MEM_REG per
// region with Options.AddMemReg.
func (f *Frontend) RegisterMemory() error {
	regions := f.Mem.Regions()
	if !f.opts.AddMemReg {
		fds := make([]int, len(regions))
		for i := range fds {
			fds[i] = f.Mem.Fd()
		}
		return f.Request(vhostuser.SetMemTable, MemTablePayload(regions), fds...)
	}
	if f.neg.Protocol&vhostuser.ProtocolConfigureMemSlots == 0 {
		return errors.New("frontend: ADD_MEM_REG needs CONFIGURE_MEM_SLOTS, which was not negotiated")
	}
	for _, r := range regions {
		if err := f.Request(vhostuser.AddMemReg, MemRegPayload(r), f.Mem.Fd()); err != nil {
			return err
		}
	}
	return nil
}

// StartQueues sets up queue 0 and the request queues (SET_VRING_NUM,
// BASE, ADDR, KICK, CALL, ERR each), then enables them all.
func (f *Frontend) StartQueues() error {
	if f.started {
		return errors.New("frontend: queues already started")
	}
	n := 1 + f.opts.RequestQueues
	for i := 0; i < n; i++ {
		q, err := newQueue(f, i, f.opts.QueueSize, f.eventIdx)
		if err != nil {
			return err
		}
		f.queues = append(f.queues, q)
		if err := f.configureQueue(q, 0); err != nil {
			return err
		}
		q.started = true
		q.startReaper()
	}
	f.started = true
	return f.enableQueues(true)
}

// configureQueue sends a queue's ring configuration, base included.
func (f *Frontend) configureQueue(q *Queue, base uint16) error {
	idx := uint32(q.index)
	low := f.Mem.Regions()[0]
	if err := f.Request(vhostuser.SetVringNum, vringState(idx, uint32(q.d.Size()))); err != nil {
		return err
	}
	if err := f.Request(vhostuser.SetVringBase, vringState(idx, uint32(base))); err != nil {
		return err
	}
	a := q.d.Addresses(low.UserAddr - low.GuestAddr)
	addr := vhostuser.VringAddr{Index: idx, Descriptor: a.Desc, Used: a.Used, Available: a.Avail}
	if err := f.Request(vhostuser.SetVringAddr, vhostuser.Encode(addr)); err != nil {
		return err
	}
	if err := f.Request(vhostuser.SetVringKick, vringFd(idx), q.kick); err != nil {
		return err
	}
	if err := f.Request(vhostuser.SetVringCall, vringFd(idx), q.callFd); err != nil {
		return err
	}
	return f.Request(vhostuser.SetVringErr, vringFd(idx), q.errFd)
}

func (f *Frontend) enableQueues(on bool) error {
	if f.neg.Features&vhostuser.FeatureProtocolFeatures == 0 {
		return nil
	}
	v := uint32(0)
	if on {
		v = 1
	}
	var errs []error
	for i := range f.queues {
		if err := f.Request(vhostuser.SetVringEnable, vringState(uint32(i), v)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Pause stops the rings the way QEMU stops a device (VM stop, before
// migration): SET_VRING_ENABLE 0 on every queue, then GET_VRING_BASE on
// each (the back-end drains the requests it consumed first). Requests the
// back-end did not consume stay in flight; Resume hands them back. It
// returns each queue's base next to the driver's available index and the
// device's used index: Base = Used when everything consumed was completed,
// Base = Avail when everything was consumed.
func (f *Frontend) Pause() ([]VringBase, error) {
	if f.paused || !f.started {
		return f.bases, nil
	}
	f.paused = true
	var errs []error
	if err := f.enableQueues(false); err != nil {
		errs = append(errs, err)
	}
	f.bases = f.bases[:0]
	for i, q := range f.queues {
		b, err := f.Call(vhostuser.GetVringBase, vringState(uint32(i), 0))
		var s vhostuser.VringState
		if err == nil {
			if s, err = vhostuser.Decode[vhostuser.VringState](b); err != nil {
				err = fmt.Errorf("frontend: GET_VRING_BASE reply of %d bytes", len(b))
			}
		}
		if err == nil && s.Index != uint32(i) {
			err = fmt.Errorf("frontend: GET_VRING_BASE for queue %d answered for queue %d", i, s.Index)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		q.mu.Lock()
		avail, used := q.d.AvailIdx(), q.d.UsedIdx()
		q.reapLocked()
		q.mu.Unlock()
		f.bases = append(f.bases, VringBase{Index: i, Base: uint16(s.Num), Avail: avail, Used: used})
	}
	return f.bases, errors.Join(errs...)
}

// Resume restarts paused rings from the bases GET_VRING_BASE returned
// (SET_VRING_NUM, BASE, ADDR, KICK, CALL, ERR, then ENABLE 1) and kicks
// every queue, so the back-end picks up what it had not consumed.
func (f *Frontend) Resume() error {
	if !f.paused || f.stopped {
		return errors.New("frontend: Resume without Pause")
	}
	if len(f.bases) != len(f.queues) {
		return errors.New("frontend: Resume after a failed Pause")
	}
	for i, q := range f.queues {
		if err := f.configureQueue(q, f.bases[i].Base); err != nil {
			return err
		}
	}
	if err := f.enableQueues(true); err != nil {
		return err
	}
	f.paused = false
	for _, q := range f.queues {
		q.Kick()
	}
	return nil
}

// Stop pauses the device (see Pause) for good: requests still in flight
// fail with ErrQueueClosed.
func (f *Frontend) Stop() ([]VringBase, error) {
	if f.stopped || !f.started {
		return f.bases, nil
	}
	bases, err := f.Pause()
	f.stopped = true
	for _, q := range f.queues {
		q.stopReaper()
	}
	return bases, err
}

// Close stops the device if needed, disconnects and releases everything.
// When Start started the back-end, Close waits (10 s at most) for it to
// exit and fails unless it exited with status 0.
func (f *Frontend) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	if _, err := f.Stop(); err != nil {
		errs = append(errs, err)
	}
	for _, q := range f.queues {
		q.stopReaper()
	}
	f.conn.Close()
	if f.proc != nil {
		if err := f.proc.WaitTimeout(10 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("back-end after disconnect: %w", err))
		}
	}
	if f.backend != nil {
		if f.proc != nil {
			// The back-end is gone, so its end of the channel is closed.
			select {
			case <-f.backend.Done():
			case <-time.After(5 * time.Second):
			}
		}
		f.backend.Close()
		<-f.backend.Done()
	}
	if f.window != nil {
		f.window.Close()
	}
	for _, q := range f.queues {
		q.closeFds()
	}
	f.Mem.Close()
	if f.tmpDir != "" {
		os.RemoveAll(f.tmpDir)
	}
	return errors.Join(errs...)
}

// Conn returns the control connection, for raw message tests. Use it only
// while no other control exchange runs.
func (f *Frontend) Conn() *vhostuser.Conn { return f.conn }

// Send writes one raw control message.
func (f *Frontend) Send(req vhostuser.Request, flags uint32, payload []byte, fds ...int) error {
	if err := f.conn.Write(req, flags, payload, fds...); err != nil {
		return fmt.Errorf("frontend: sending %v: %w", req, err)
	}
	return nil
}

// ReadMessage reads one control message, bounded by the Timeout. The
// payload is a copy; the caller owns any descriptors.
func (f *Frontend) ReadMessage() (*vhostuser.Message, error) {
	if f.opts.Timeout > 0 {
		f.uc.SetReadDeadline(time.Now().Add(f.opts.Timeout))
		defer f.uc.SetReadDeadline(time.Time{})
	}
	m, err := f.conn.Read()
	if err != nil {
		return nil, fmt.Errorf("frontend: reading a reply: %w", err)
	}
	m.Payload = append([]byte(nil), m.Payload...)
	return m, nil
}

func (f *Frontend) readReply(req vhostuser.Request) ([]byte, error) {
	m, err := f.ReadMessage()
	if err != nil {
		return nil, fmt.Errorf("%v: %w", req, err)
	}
	m.CloseFds()
	if m.Request != req {
		return nil, fmt.Errorf("frontend: %v answered with %v", req, m.Request)
	}
	if m.Flags != vhostuser.FlagVersion|vhostuser.FlagReply {
		return nil, fmt.Errorf("frontend: reply to %v has flags %#x, QEMU accepts only 0x5", req, m.Flags)
	}
	return m.Payload, nil
}

// Call sends a request that has a reply body and returns the body.
func (f *Frontend) Call(req vhostuser.Request, payload []byte, fds ...int) ([]byte, error) {
	f.ctlMu.Lock()
	defer f.ctlMu.Unlock()
	if err := f.Send(req, vhostuser.FlagVersion, payload, fds...); err != nil {
		return nil, err
	}
	return f.readReply(req)
}

// CallU64 is Call for a u64 reply.
func (f *Frontend) CallU64(req vhostuser.Request, payload []byte) (uint64, error) {
	b, err := f.Call(req, payload)
	if err != nil {
		return 0, err
	}
	v, err := vhostuser.DecodeExact[vhostuser.U64](b)
	if err != nil {
		return 0, fmt.Errorf("frontend: %v reply is %d bytes, want 8", req, len(b))
	}
	return v.Value, nil
}

// ReplyAck reports whether requests carry NEED_REPLY.
func (f *Frontend) ReplyAck() bool {
	return f.neg.Protocol&vhostuser.ProtocolReplyAck != 0 && !f.opts.NoNeedReply
}

// Request sends a request without a reply body. With REPLY_ACK it sets
// NEED_REPLY and fails unless the back-end acks with 0.
func (f *Frontend) Request(req vhostuser.Request, payload []byte, fds ...int) error {
	f.ctlMu.Lock()
	defer f.ctlMu.Unlock()
	if !f.ReplyAck() {
		return f.Send(req, vhostuser.FlagVersion, payload, fds...)
	}
	if err := f.Send(req, vhostuser.FlagVersion|vhostuser.FlagNeedReply, payload, fds...); err != nil {
		return err
	}
	b, err := f.readReply(req)
	if err != nil {
		return err
	}
	v, err := vhostuser.DecodeExact[vhostuser.U64](b)
	if err != nil {
		return fmt.Errorf("frontend: ack of %v is %d bytes, want 8", req, len(b))
	}
	if v.Value != 0 {
		return &NackError{Request: req, Status: v.Value}
	}
	return nil
}

// NackError is a non-zero REPLY_ACK status.
type NackError struct {
	Request vhostuser.Request
	Status  uint64
}

func (e *NackError) Error() string {
	return fmt.Sprintf("frontend: back-end refused %v (status %d)", e.Request, e.Status)
}

// GetConfig reads size bytes of the device configuration space at offset
// (needs CONFIG). The back-end answers with the request header echoed; a
// reply whose size is 0 is a refusal, as QEMU reads it.
func (f *Frontend) GetConfig(offset, size uint32) ([]byte, error) {
	p := make([]byte, vhostuser.ConfigSpaceSize+int(size))
	vhostuser.ConfigSpace{Offset: offset, Size: size}.Put(p)
	b, err := f.Call(vhostuser.GetConfig, p)
	if err != nil {
		return nil, err
	}
	c, err := vhostuser.Decode[vhostuser.ConfigSpace](b)
	if err != nil || c.Size == 0 {
		return nil, errors.New("frontend: GET_CONFIG refused")
	}
	if c.Size != size || len(b) != vhostuser.ConfigSpaceSize+int(size) {
		return nil, fmt.Errorf("frontend: GET_CONFIG answered %d bytes (size field %d), want %d", len(b)-vhostuser.ConfigSpaceSize, c.Size, size)
	}
	return b[vhostuser.ConfigSpaceSize:], nil
}
