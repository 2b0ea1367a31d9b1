package vhostuser

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testSession is a Backend with a fake device served over a socketpair,
// and the front-end's end of it.
type testSession struct {
	t      *testing.T
	front  *Conn
	served chan error
}

func newTestSession(t *testing.T) *testSession {
	return newDeviceSession(t, &fakeDevice{queues: 2}, Options{Log: quietLog()})
}

// newDeviceSession is newTestSession with a device and options of the
// caller's.
func newDeviceSession(t *testing.T, dev Device, opts Options) *testSession {
	t.Helper()
	front, back, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	b := NewBackend(dev, opts)
	s := &testSession{t: t, front: NewConn(front), served: make(chan error, 1)}
	go func() {
		err := b.Serve(back)
		back.Close() // Serve leaves its connection to the caller
		s.served <- err
	}()
	t.Cleanup(func() { s.hangUp() })
	s.request(SetProtocolFeatures, u64le(ProtocolReplyAck|ProtocolConfigureMemSlots), false)
	return s
}

// request sends req with NEED_REPLY (when ack) and returns the ack status.
func (s *testSession) request(req Request, payload []byte, ack bool, fds ...int) uint64 {
	s.t.Helper()
	flags := uint32(FlagVersion)
	if ack {
		flags |= FlagNeedReply
	}
	if err := s.front.Write(req, flags, payload, fds...); err != nil {
		s.t.Fatalf("sending %v: %v", req, err)
	}
	if !ack {
		return 0
	}
	m, err := s.front.Read()
	if err != nil {
		s.t.Fatalf("ack of %v: %v", req, err)
	}
	if m.Request != req || len(m.Payload) != 8 {
		s.t.Fatalf("ack of %v: %v with %d bytes", req, m.Request, len(m.Payload))
	}
	return binary.LittleEndian.Uint64(m.Payload)
}

// startRings shares guestFd's memory and starts rings 0 to n-1 at
// vringAddr's layout, without call descriptors.
func (s *testSession) startRings(guestFd int, n uint32) {
	s.t.Helper()
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, guestFd)
	for q := uint32(0); q < n; q++ {
		kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			s.t.Fatal(err)
		}
		s.startRing(q, vringAddr(q, int(q)), kick, -1)
		unix.Close(kick)
	}
}

// startRing starts ring q, of 16 entries, at the SET_VRING_ADDR payload
// addr with the kick descriptor and, unless it is -1, the call one.
func (s *testSession) startRing(q uint32, addr []byte, kick, call int) {
	s.t.Helper()
	type msg struct {
		req     Request
		payload []byte
		fds     []int
	}
	msgs := []msg{{SetVringNum, u32le(q, 16), nil}, {SetVringBase, u32le(q, 0), nil}, {SetVringAddr, addr, nil}}
	if call >= 0 {
		msgs = append(msgs, msg{SetVringCall, u64le(uint64(q)), []int{call}})
	}
	msgs = append(msgs, msg{SetVringKick, u64le(uint64(q)), []int{kick}}, msg{SetVringEnable, u32le(q, 1), nil})
	for _, m := range msgs {
		if st := s.request(m.req, m.payload, true, m.fds...); st != 0 {
			s.t.Fatalf("queue %d: %v refused", q, m.req)
		}
	}
}

func (s *testSession) hangUp() {
	if s.front == nil {
		return
	}
	s.front.Close()
	s.front = nil
	select {
	case <-s.served:
	case <-time.After(10 * time.Second):
		s.t.Fatal("Serve did not return after the front-end hung up")
	}
}

// TestMemTableRegionPastEOF: a memory region that runs past the end of its
// file must be refused. Mapped anyway, the first access past the end (the
// rings, a buffer) raises SIGBUS and kills the daemon; FuzzMessageDecode
// found it (a SET_MEM_TABLE with a large mmap_offset, then a kick).
// rust-vmm's vm-memory refuses such regions (MappingPastEof).
func TestMemTableRegionPastEOF(t *testing.T) {
	fd := testMemfd(t, "small-guest", 64<<10)
	for _, tc := range []struct {
		name       string
		size, off  uint64
		addMemReg  bool
		wantRefuse bool
	}{
		{"fits", 64 << 10, 0, false, false},
		{"size past the end", 1 << 20, 0, false, true},
		{"offset past the end", 4096, 64 << 10, false, true},
		{"ADD_MEM_REG size past the end", 1 << 20, 0, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSession(t)
			var status uint64
			if tc.addMemReg {
				status = s.request(AddMemReg, append(make([]byte, 8), region(0, tc.size, fzUserBase, tc.off)...), true, fd)
			} else {
				status = s.request(SetMemTable, append(u32le(1, 0), region(0, tc.size, fzUserBase, tc.off)...), true, fd)
			}
			if refused := status != 0; refused != tc.wantRefuse {
				t.Errorf("region of %#x bytes at file offset %#x over a %#x-byte file: refused %v, want %v", tc.size, tc.off, 64<<10, refused, tc.wantRefuse)
			}
		})
	}
}

// TestServeClosesItsDescriptors: once Serve returns, every descriptor the
// back-end opened or received is closed. The rings' wake-up eventfds stay
// open today (vring.reset never closes v.wake); a daemon serves one
// connection, so it is a leak per Backend, not per request.
func TestServeClosesItsDescriptors(t *testing.T) {
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		t.Fatal(err)
	}
	fillGuest(guest, nil)
	before := fdSnapshot()
	s := newTestSession(t)
	s.startRings(guestFd, 2)
	s.hangUp()
	leaked, wakes := leakedFds(before, fdSnapshot())
	if len(leaked) > 0 || wakes > 0 {
		t.Errorf("after Serve returned: %d of the back-end's eventfds and %v still open", wakes, leaked)
	}
	for fd, what := range fdSnapshot() {
		if _, ok := before[fd]; !ok && what == "anon_inode:[eventfd]" && nonBlocking(fd) {
			unix.Close(fd)
		}
	}
}
