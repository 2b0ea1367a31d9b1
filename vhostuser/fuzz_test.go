package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// The fake guest of FuzzMessageDecode: one memfd, sparse and as large as
// the largest mapping MapRegion accepts (1<<48, offset included), so that
// no access lands past its end (the back-end does not check region sizes
// against the file: see TestMemTableRegionPastEOF), whose first
// MiB holds ready-made rings: queue i at fzRingStride*i, size 16,
// descriptors at +0, available ring at +0x1000, used ring at +0x2000.
const (
	fzGuestName   = "vu-fuzz-guest"
	fzGuestSize   = 1 << 48
	fzGuestWindow = 1 << 20 // what the harness fills
	fzUserBase    = 0x7f0000000000
	fzRingStride  = 0x4000
	fzQueues      = 3
	fzMaxRecords  = 64
	// fzWait bounds every wait of the harness on the back-end.
	fzWait = 10 * time.Second
)

var (
	fzGuestOnce sync.Once
	fzGuestFd   int
	fzGuestMap  []byte
	fzGuestErr  error
)

func fuzzGuest() (int, []byte, error) {
	fzGuestOnce.Do(func() {
		fd, err := unix.MemfdCreate(fzGuestName, unix.MFD_CLOEXEC)
		if err != nil {
			fzGuestErr = err
			return
		}
		if err := unix.Ftruncate(fd, fzGuestSize); err != nil {
			fzGuestErr = err
			return
		}
		m, err := unix.Mmap(fd, 0, fzGuestWindow, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			fzGuestErr = err
			return
		}
		fzGuestFd, fzGuestMap = fd, m
	})
	return fzGuestFd, fzGuestMap, fzGuestErr
}

// fakeDevice serves chains by touching both ends of them and writing a
// short reply.
type fakeDevice struct {
	queues int
	config []byte
}

func (d *fakeDevice) Features() uint64    { return 0 }
func (d *fakeDevice) MaxQueues() int      { return d.queues }
func (d *fakeDevice) Config() []byte      { return d.config }
func (d *fakeDevice) NewHandler() Handler { return fakeHandler{} }
func (d *fakeDevice) Reset()              {}

type fakeHandler struct{}

func (fakeHandler) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	var x byte
	for _, s := range c.Readable {
		x ^= s[0] ^ s[len(s)-1]
	}
	if len(c.Writable) == 0 {
		return 0
	}
	n := copy(c.Writable[0], "fuzz reply")
	c.Writable[0][0] ^= x
	return uint32(n)
}

// Record control byte of the fuzz stream.
const (
	recFdCount = 0x03 // how many descriptors travel with the record
	recFdKind  = 0x1c // which kind (>> 2)
	recFramed  = 0x20 // data is request, flags, payload: the harness adds the size
	recKick    = 0x40 // write every eventfd sent so far afterwards (kicks)
)

// Descriptor kinds a record can carry.
const (
	fdGuest = iota // the guest memfd
	fdEventfd
	fdSocket // one end of a fresh socketpair
	fdPipe   // the write end of a fresh pipe
	fdDir    // a directory (mmap fails)
	fdKinds
)

type fzRecord struct {
	ctl  byte
	data []byte
}

// parseRecords splits the fuzz stream: a control byte, a little-endian
// uint16 length, then that many bytes (fewer if the stream ends).
func parseRecords(stream []byte) []fzRecord {
	var recs []fzRecord
	for len(stream) >= 3 && len(recs) < fzMaxRecords {
		ctl, n := stream[0], int(binary.LittleEndian.Uint16(stream[1:]))
		stream = stream[3:]
		n = min(n, len(stream))
		recs = append(recs, fzRecord{ctl, stream[:n]})
		stream = stream[n:]
	}
	return recs
}

// wire returns the bytes a record puts on the socket.
func (r fzRecord) wire() []byte {
	if r.ctl&recFramed == 0 {
		return r.data
	}
	b := make([]byte, HeaderSize, HeaderSize+len(r.data))
	copy(b, r.data[:min(8, len(r.data))])
	if len(r.data) > 8 {
		b = append(b, r.data[8:]...)
	}
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-HeaderSize))
	return b
}

// frame reads the byte stream the way Conn.Read does and reports how many
// complete GET_FEATURES requests it holds, whether the back-end must close
// (a bad version or an oversized payload) and whether the stream ends on a
// message boundary.
func frame(stream []byte) (getFeatures int, closes, aligned bool) {
	for {
		if len(stream) == 0 {
			return getFeatures, false, true
		}
		if len(stream) < HeaderSize {
			return getFeatures, false, false
		}
		req, flags, size := binary.LittleEndian.Uint32(stream), binary.LittleEndian.Uint32(stream[4:]), binary.LittleEndian.Uint32(stream[8:])
		if flags&versionMask != FlagVersion || size > MaxPayload {
			return getFeatures, true, false
		}
		if uint64(len(stream)) < HeaderSize+uint64(size) {
			return getFeatures, false, false
		}
		if Request(req) == GetFeatures {
			getFeatures++
		}
		stream = stream[HeaderSize+size:]
	}
}

// fdSnapshot returns the process's open descriptors and what they are.
func fdSnapshot() map[int]string {
	ents, _ := os.ReadDir("/proc/self/fd")
	out := map[int]string{}
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil {
			continue
		}
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out[fd] = target
	}
	return out
}

// guestMappings counts the mappings of the fake guest's memfd.
func guestMappings() int {
	b, _ := os.ReadFile("/proc/self/maps")
	return strings.Count(string(b), "memfd:"+fzGuestName)
}

// fillGuest lays out the ready-made rings and buffers, then the fuzzer's
// bytes over them.
func fillGuest(m []byte, ring []byte) {
	clear(m)
	for q := 0; q < fzQueues; q++ {
		r := m[q*fzRingStride:]
		buf := uint64(0x80000 + q*0x1000)
		putDesc(r, 0, buf, 64, virtqueue.DescNext, 1)
		putDesc(r, 1, buf+64, 64, virtqueue.DescWrite, 0)
		binary.LittleEndian.PutUint16(r[0x1000+2:], 1) // avail idx 1, ring[0] = 0
	}
	copy(m, ring)
}

// putDesc writes descriptor i of the table at the start of r.
func putDesc(r []byte, i int, addr uint64, n uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(r[16*i:], addr)
	binary.LittleEndian.PutUint32(r[16*i+8:], n)
	binary.LittleEndian.PutUint16(r[16*i+12:], flags)
	binary.LittleEndian.PutUint16(r[16*i+14:], next)
}

// testGuest returns a memfd of size bytes and its shared mapping, both
// let go when t ends.
func testGuest(t *testing.T, name string, size int) (int, []byte) {
	t.Helper()
	fd := testMemfd(t, name, int64(size))
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	return fd, m
}

// testMemfd returns a memfd of size bytes, closed when t ends.
func testMemfd(t *testing.T, name string, size int64) int {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	return fd
}

// fzOpts picks the back-end options from the first bytes of ring.
func fzOpts(sel byte) Options {
	o := Options{Log: quietLog()}
	if sel&1 != 0 {
		o.ThreadPoolSize = 2
	}
	if sel&2 != 0 {
		o.ShmemSizes = []uint64{1 << 30}
	}
	if sel&4 != 0 {
		o.MaxMemSlots = 4
	}
	return o
}

func quietLog() *logrus.Logger {
	l := logrus.New()
	l.Out = io.Discard
	return l
}

// fzReply is one message the back-end sent.
type fzReply struct {
	req     Request
	flags   uint32
	payload int
}

// FuzzMessageDecode drives a Backend with a fake device over a socketpair
// with an arbitrary stream of vhost-user bytes and descriptors, read
// through the same codec (Conn) as the daemon's. Nothing may panic; every
// message the back-end sends must be a well-formed reply (flags exactly
// 0x5, a body of the size its request implies); when the stream ends on a
// message boundary without a malformed header, a GET_FEATURES sent after
// it must be answered; once the front-end hangs up, Serve must return;
// afterwards no descriptor the back-end received may stay open and no
// guest memory may stay mapped.
//
// stream is a sequence of records (see parseRecords and the rec* bits);
// ring is copied over the fake guest's first MiB after the ready-made
// rings (see fillGuest); opts selects back-end options (fzOpts).
//
// The seed corpus in testdata/fuzz/FuzzMessageDecode is messageSeeds,
// written by TestMessageDecodeCorpus.
func FuzzMessageDecode(f *testing.F) {
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, stream, ring []byte, opts byte) {
		fillGuest(guest, ring)
		recs := parseRecords(stream)
		var all []byte
		for _, r := range recs {
			all = append(all, r.wire()...)
		}
		expectFeatures, closes, aligned := frame(all)

		fdsBefore := fdSnapshot()
		mapsBefore := guestMappings()
		dev := &fakeDevice{queues: fzQueues, config: make([]byte, 40)}
		b := NewBackend(dev, fzOpts(opts))
		front, back, err := socketpair()
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- b.Serve(back) }()

		var mu sync.Mutex
		var replies []fzReply
		var replyErr error
		features := make(chan struct{}, 1024)
		readerDone := make(chan struct{})
		conn := NewConn(front)
		go func() {
			defer close(readerDone)
			for {
				m, err := conn.Read()
				if err != nil {
					if !errors.Is(err, ErrClosed) && !errors.Is(err, net.ErrClosed) {
						mu.Lock()
						replyErr = err
						mu.Unlock()
						// Keep draining, so the back-end never blocks
						// on its replies.
						io.Copy(io.Discard, front)
					}
					return
				}
				r := fzReply{m.Request, m.Flags, len(m.Payload)}
				m.CloseFds()
				mu.Lock()
				replies = append(replies, r)
				mu.Unlock()
				if r.req == GetFeatures {
					features <- struct{}{}
				}
			}
		}()

		// Send the records, each with its descriptors. A back-end that
		// stops reading (it is stuck) fails the write at the deadline.
		front.SetWriteDeadline(time.Now().Add(fzWait))
		var keep []int // our ends of pipes and sockets, eventfds to kick
		var kicks []int
		for _, r := range recs {
			w := r.wire()
			var fds []int
			if len(w) > 0 {
				for i := 0; i < int(r.ctl&recFdCount); i++ {
					fd, peer, kick := makeFd(int(r.ctl&recFdKind>>2)%fdKinds, guestFd)
					if fd < 0 {
						continue
					}
					fds = append(fds, fd)
					if peer >= 0 {
						keep = append(keep, peer)
					}
					if kick {
						k, err := unix.Dup(fd)
						if err == nil {
							kicks = append(kicks, k)
						}
					}
				}
			}
			var oob []byte
			if len(fds) > 0 {
				oob = unix.UnixRights(fds...)
			}
			_, _, werr := front.WriteMsgUnix(w, oob, nil)
			for _, fd := range fds {
				unix.Close(fd)
			}
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				t.Fatalf("the back-end stopped reading its socket (stuck for %v)", fzWait)
			}
			if werr != nil {
				break // the back-end hung up
			}
			if r.ctl&recKick != 0 {
				for _, k := range kicks {
					unix.Write(k, []byte{1, 0, 0, 0, 0, 0, 0, 0})
				}
			}
		}
		// The probe.
		probe := make([]byte, HeaderSize)
		binary.LittleEndian.PutUint32(probe, uint32(GetFeatures))
		binary.LittleEndian.PutUint32(probe[4:], FlagVersion)
		front.Write(probe)
		if aligned && !closes {
			deadline := time.After(fzWait)
			for got := 0; got < expectFeatures+1; got++ {
				select {
				case <-features:
				case <-deadline:
					t.Fatalf("the back-end did not answer GET_FEATURES %d of %d within %v", got+1, expectFeatures+1, fzWait)
				}
			}
		}
		front.CloseWrite()
		select {
		case <-served:
		case <-time.After(fzWait):
			t.Fatalf("Serve did not return within %v of the front-end hanging up", fzWait)
		}
		front.Close()
		back.Close() // Serve leaves its connection to the caller
		<-readerDone
		for _, fd := range append(keep, kicks...) {
			unix.Close(fd)
		}

		mu.Lock()
		defer mu.Unlock()
		if replyErr != nil {
			t.Fatalf("malformed message from the back-end: %v", replyErr)
		}
		for _, r := range replies {
			if err := checkReply(r); err != nil {
				t.Fatal(err)
			}
		}
		if n := guestMappings(); n != mapsBefore {
			t.Fatalf("%d mappings of guest memory left after Serve returned (%d before)", n, mapsBefore)
		}
		leaked, wakes := leakedFds(fdsBefore, fdSnapshot())
		if len(leaked) > 0 {
			t.Fatalf("descriptors left open after Serve returned: %v", leaked)
		}
		if wakes > fzQueues {
			t.Fatalf("%d of the back-end's own eventfds left open after Serve returned, more than its %d rings", wakes, fzQueues)
		}
		for fd, what := range fdSnapshot() {
			// The wake eventfds left open by earlier runs would pile up
			// to EMFILE over a long fuzzing run: close them here.
			if _, ok := fdsBefore[fd]; !ok && what == "anon_inode:[eventfd]" && nonBlocking(fd) {
				unix.Close(fd)
			}
		}
	})
}

// makeFd returns a descriptor of the given kind to send, a descriptor the
// harness keeps (or -1) and whether the sent one is an eventfd to kick.
func makeFd(kind, guestFd int) (fd, keep int, kick bool) {
	switch kind {
	case fdGuest:
		fd, err := unix.Dup(guestFd)
		if err != nil {
			return -1, -1, false
		}
		return fd, -1, false
	case fdEventfd:
		// Blocking, to tell them from the back-end's own (leakedFds).
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			return -1, -1, false
		}
		return fd, -1, true
	case fdSocket:
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, -1, false
		}
		return p[0], p[1], false
	case fdPipe:
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			return -1, -1, false
		}
		return p[1], p[0], false
	default:
		fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, -1, false
		}
		return fd, -1, false
	}
}

// leakedFds lists descriptors open now that were not before, except the
// runtime's own (epoll, created lazily) and the listing's own (gone by
// the time it is read). Non-blocking eventfds are the back-end's own ring
// wake-ups, which Serve leaves open (see TestServeClosesItsDescriptors);
// they are counted apart so that the fuzzer can look for other leaks (the
// eventfds it sends are blocking).
func leakedFds(before, after map[int]string) (leaked []string, wakes int) {
	for fd, what := range after {
		if _, ok := before[fd]; ok || what == "" || strings.Contains(what, "[eventpoll]") {
			continue
		}
		if what == "anon_inode:[eventfd]" && nonBlocking(fd) {
			wakes++
			continue
		}
		leaked = append(leaked, fmt.Sprintf("%d -> %s", fd, what))
	}
	return leaked, wakes
}

// nonBlocking reports whether fd has O_NONBLOCK, from /proc/self/fdinfo.
func nonBlocking(fd int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		var flags int
		if _, err := fmt.Sscanf(line, "flags: %o", &flags); err == nil {
			return flags&unix.O_NONBLOCK != 0
		}
	}
	return false
}

// checkReply checks one message from the back-end.
func checkReply(r fzReply) error {
	if r.flags != FlagVersion|FlagReply {
		return fmt.Errorf("reply to %v with flags %#x, QEMU accepts only 0x5", r.req, r.flags)
	}
	want := -1
	switch r.req {
	case GetFeatures, GetProtocolFeatures, GetQueueNum, GetMaxMemSlots, GetVringBase:
		want = 8
	case GetConfig:
		if r.payload < 12 && r.payload != 0 {
			return fmt.Errorf("GET_CONFIG reply of %d bytes", r.payload)
		}
		return nil
	case GetShmemConfig:
		want = 8 + 8*256
	default:
		want = 8 // REPLY_ACK
	}
	if r.payload != want {
		return fmt.Errorf("reply to %v carries %d bytes, want %d", r.req, r.payload, want)
	}
	return nil
}

func socketpair() (front, back *net.UnixConn, err error) {
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range p {
		f := os.NewFile(uintptr(fd), "vhost-user-fuzz")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1], nil
}

// Seeds.

// msg encodes one framed record: request, flags, payload, with nfds
// descriptors of kind.
func msg(req Request, flags uint32, payload []byte, nfds, kind int, kick bool) []byte {
	ctl := byte(recFramed) | byte(nfds&3) | byte(kind<<2)
	if kick {
		ctl |= recKick
	}
	data := make([]byte, 8, 8+len(payload))
	binary.LittleEndian.PutUint32(data, uint32(req))
	binary.LittleEndian.PutUint32(data[4:], flags)
	data = append(data, payload...)
	out := []byte{ctl, 0, 0}
	binary.LittleEndian.PutUint16(out[1:], uint16(len(data)))
	return append(out, data...)
}

// raw encodes one unframed record.
func raw(data []byte, nfds, kind int) []byte {
	out := []byte{byte(nfds&3) | byte(kind<<2), 0, 0}
	binary.LittleEndian.PutUint16(out[1:], uint16(len(data)))
	return append(out, data...)
}

func u64le(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func u32le(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

func region(ga, size, ua, off uint64) []byte {
	return Encode(MemoryRegion{GuestAddr: ga, Size: size, UserAddr: ua, MmapOffset: off})
}

func vringAddr(idx uint32, q int) []byte {
	base := uint64(fzUserBase + q*fzRingStride)
	return addrPayload(idx, virtqueue.Addresses{Desc: base, Avail: base + 0x1000, Used: base + 0x2000})
}

// addrPayload is the SET_VRING_ADDR payload for ring idx at a (flags and
// log address 0).
func addrPayload(idx uint32, a virtqueue.Addresses) []byte {
	return Encode(VringAddr{Index: idx, Descriptor: a.Desc, Used: a.Used, Available: a.Avail})
}

// session is QEMU's start-up: negotiation, memory, two rings, a kick, then
// a stop.
func session(replyAck bool, addMemReg bool) []byte {
	const v, nr = FlagVersion, FlagVersion | FlagNeedReply
	f := uint32(v)
	if replyAck {
		f = nr
	}
	proto := uint64(ProtocolMQ | ProtocolBackendReq | ProtocolConfigureMemSlots | ProtocolResetDevice | ProtocolConfig)
	if replyAck {
		proto |= ProtocolReplyAck
	}
	var s []byte
	s = append(s, msg(GetFeatures, v, nil, 0, 0, false)...)
	s = append(s, msg(GetProtocolFeatures, v, nil, 0, 0, false)...)
	s = append(s, msg(SetProtocolFeatures, v, u64le(proto), 0, 0, false)...)
	s = append(s, msg(GetQueueNum, v, nil, 0, 0, false)...)
	s = append(s, msg(GetMaxMemSlots, v, nil, 0, 0, false)...)
	s = append(s, msg(SetBackendReqFd, f, nil, 1, fdSocket, false)...)
	s = append(s, msg(SetOwner, f, nil, 0, 0, false)...)
	s = append(s, msg(SetFeatures, f, u64le(FeatureVersion1|FeatureIndirectDesc|FeatureEventIdx|FeatureProtocolFeatures), 0, 0, false)...)
	if addMemReg {
		s = append(s, msg(AddMemReg, f, append(make([]byte, 8), region(0, 1<<20, fzUserBase, 0)...), 1, fdGuest, false)...)
	} else {
		s = append(s, msg(SetMemTable, f, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), 1, fdGuest, false)...)
	}
	for q := uint32(0); q < 2; q++ {
		s = append(s, msg(SetVringNum, f, u32le(q, 16), 0, 0, false)...)
		s = append(s, msg(SetVringBase, f, u32le(q, 0), 0, 0, false)...)
		s = append(s, msg(SetVringAddr, f, vringAddr(q, int(q)), 0, 0, false)...)
		s = append(s, msg(SetVringCall, f, u64le(uint64(q)), 1, fdEventfd, false)...)
		s = append(s, msg(SetVringErr, f, u64le(uint64(q)), 1, fdEventfd, false)...)
		s = append(s, msg(SetVringKick, f, u64le(uint64(q)), 1, fdEventfd, false)...)
		s = append(s, msg(SetVringEnable, f, u32le(q, 1), 0, 0, true)...)
	}
	s = append(s, msg(GetConfig, v, append(u32le(0, 40, 0), make([]byte, 40)...), 0, 0, false)...)
	for q := uint32(0); q < 2; q++ {
		s = append(s, msg(SetVringEnable, f, u32le(q, 0), 0, 0, false)...)
		s = append(s, msg(GetVringBase, v, u32le(q, 0), 0, 0, false)...)
	}
	return s
}

type msgSeed struct {
	name         string
	stream, ring []byte
	opts         byte
}

func messageSeeds() []msgSeed {
	const v, nr = FlagVersion, FlagVersion | FlagNeedReply
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	return []msgSeed{
		{"session", session(false, false), nil, 0},
		{"session-reply-ack-addmemreg-pool", session(true, true), nil, 1},
		{"session-shmem-slots", cat(session(true, false), msg(GetShmemConfig, v, nil, 0, 0, false),
			msg(AddMemReg, nr, append(make([]byte, 8), region(1<<30, 1<<20, fzUserBase+1<<30, 1<<20)...), 1, fdGuest, false),
			msg(RemMemReg, nr, append(make([]byte, 8), region(1<<30, 1<<20, fzUserBase+1<<30, 1<<20)...), 0, 0, false),
			msg(ResetDevice, nr, nil, 0, 0, false)), nil, 6},
		{"memory-change-while-running", cat(session(true, false),
			msg(SetVringEnable, nr, u32le(1, 1), 0, 0, true),
			msg(SetMemTable, nr, append(u32le(2, 0), append(region(0, 1<<19, fzUserBase, 0), region(1<<19, 1<<19, fzUserBase+1<<19, 1<<19)...)...), 2, fdGuest, true),
			msg(RemMemReg, nr, append(make([]byte, 8), region(1<<19, 1<<19, fzUserBase+1<<19, 1<<19)...), 0, 0, true),
			msg(ResetOwner, nr, nil, 0, 0, false)), nil, 1},
		{"bad-messages", cat(
			msg(SetProtocolFeatures, v, u64le(ProtocolReplyAck), 0, 0, false),
			msg(SetMemTable, nr, u32le(40, 0), 2, fdGuest, false),
			msg(SetMemTable, nr, append(u32le(1, 0), region(0, 0, 0, 0)...), 1, fdGuest, false),
			msg(SetMemTable, nr, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), 1, fdDir, false),
			msg(SetVringNum, nr, u32le(7, 3), 0, 0, false),
			msg(SetVringAddr, nr, u32le(1), 0, 0, false),
			msg(SetVringKick, nr, u64le(0x1ff), 0, 0, false),
			msg(SetVringKick, nr, u64le(1), 3, fdPipe, false),
			msg(SetVringCall, nr, u64le(200), 1, fdEventfd, false),
			msg(SetBackendReqFd, nr, nil, 1, fdPipe, false),
			msg(GetConfig, v, u32le(1000, 1<<20, 0), 0, 0, false),
			msg(AddMemReg, nr, make([]byte, 8+MemRegionSize), 2, fdGuest, false),
			msg(Request(99), nr, nil, 1, fdEventfd, false),
			msg(GetVringBase, v, u32le(5), 0, 0, false)), nil, 0},
		{"partial-header", cat(msg(GetFeatures, v, nil, 0, 0, false), raw([]byte{1, 0, 0, 0, 1}, 1, fdEventfd)), nil, 0},
		{"bad-version", cat(msg(GetQueueNum, v, nil, 0, 0, false), raw(cat(u32le(1, 2, 0)), 1, fdGuest)), nil, 0},
		{"oversized", raw(cat(u32le(5, 1, MaxPayload+1), make([]byte, 32)), 2, fdGuest), nil, 0},
		{"payload-lies", cat(raw(cat(u32le(uint32(SetMemTable), 1, 4000), u32le(1, 0)), 1, fdGuest), msg(GetFeatures, v, nil, 0, 0, false)), nil, 0},
	}
}

// TestMessageDecodeCorpus checks that testdata/fuzz/FuzzMessageDecode holds
// messageSeeds, and with VHOSTUSER_WRITE_CORPUS=1 writes them.
func TestMessageDecodeCorpus(t *testing.T) {
	write := os.Getenv("VHOSTUSER_WRITE_CORPUS") == "1"
	dir := filepath.Join("testdata", "fuzz", "FuzzMessageDecode")
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range messageSeeds() {
		path := filepath.Join(dir, "seed-"+s.name)
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\nbyte(%q)\n", s.stream, s.ring, s.opts)
		if write {
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (regenerate with VHOSTUSER_WRITE_CORPUS=1)", err)
		}
		if string(got) != body {
			t.Errorf("%s is stale (regenerate with VHOSTUSER_WRITE_CORPUS=1)", path)
		}
	}
}
