package vhostuser

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requestWithin sends req with NEED_REPLY and returns its ack status, or
// false when no ack comes within d (the back-end is stuck). After a false
// the session is left to its cleanup.
func (s *testSession) requestWithin(req Request, payload []byte, d time.Duration, fds ...int) (uint64, bool) {
	s.t.Helper()
	if err := s.front.Write(req, FlagVersion|FlagNeedReply, payload, fds...); err != nil {
		s.t.Fatalf("sending %v: %v", req, err)
	}
	type ack struct {
		status uint64
		err    error
	}
	got := make(chan ack, 1)
	front := s.front
	go func() {
		m, err := front.Read()
		if err == nil && len(m.Payload) != 8 {
			err = os.ErrInvalid
		}
		if err != nil {
			got <- ack{err: err}
			return
		}
		got <- ack{status: binary.LittleEndian.Uint64(m.Payload)}
	}()
	select {
	case a := <-got:
		if a.err != nil {
			s.t.Fatalf("ack of %v: %v", req, a.err)
		}
		return a.status, true
	case <-time.After(d):
		return 0, false
	}
}

// notifierKinds returns descriptors of every kind but an eventfd, each
// closed when t ends, by name.
func notifierKinds(t *testing.T) map[string]int {
	t.Helper()
	fds := map[string]int{}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	fds["pipe read end"], fds["pipe write end"] = p[0], p[1]
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(sp[1])
	fds["socket"] = sp[0]
	f, err := os.CreateTemp(t.TempDir(), "kick")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fds["regular file"] = int(f.Fd())
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ff, err := unix.Open(fifo, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fds["fifo"] = ff
	for _, fd := range []int{p[0], p[1], sp[0], ff} {
		t.Cleanup(func() { unix.Close(fd) })
	}
	return fds
}

// TestNotifierFdKinds: kick, call and error descriptors must be eventfds.
// A full pipe as call descriptor blocked the worker's interrupt write,
// which it makes holding the ring's lock, and so the control goroutine;
// a socket with a receive low-water mark blocked the kick read ppoll said
// would not block; a regular file or a hung-up pipe as kick descriptor
// kept the worker spinning. Such descriptors are refused, and an eventfd
// is made non-blocking.
func TestNotifierFdKinds(t *testing.T) {
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		t.Fatal(err)
	}
	fillGuest(guest, nil)
	s := newTestSession(t)
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, guestFd)
	// Ring 1 is ready to start: only the kick is missing.
	for _, m := range []struct {
		req     Request
		payload []byte
	}{{SetVringNum, u32le(1, 16)}, {SetVringBase, u32le(1, 0)}, {SetVringAddr, vringAddr(1, 1)}} {
		if st := s.request(m.req, m.payload, true); st != 0 {
			t.Fatalf("%v refused", m.req)
		}
	}
	for name, fd := range notifierKinds(t) {
		for _, req := range []Request{SetVringCall, SetVringErr, SetVringKick} {
			if st := s.request(req, u64le(1), true, fd); st == 0 {
				t.Errorf("%v with a %s accepted", req, name)
			}
		}
	}
	for _, req := range []Request{SetVringCall, SetVringErr, SetVringKick} {
		ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(ev)
		if st := s.request(req, u64le(1), true, ev); st != 0 {
			t.Errorf("%v with an eventfd refused", req)
		}
		if !nonBlocking(ev) {
			t.Errorf("%v left its eventfd blocking", req)
		}
	}
}

// TestCallEventfdFull: a call eventfd the front-end sends blocking with
// its counter one short of the maximum. The worker's interrupt write would
// wait for the front-end to read the counter, holding the ring's lock, so
// that the next SET_VRING_CALL was never answered (and, the write being a
// raw system call, the next garbage collection stopped the whole process).
// The descriptor is made non-blocking, and a full counter skips the
// interrupt.
func TestCallEventfdFull(t *testing.T) {
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		t.Fatal(err)
	}
	fillGuest(guest, nil)
	s := newTestSession(t)
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, guestFd)
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(kick)
	call, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(call)
	if _, err := unix.Write(call, binary.LittleEndian.AppendUint64(nil, ^uint64(0)-1)); err != nil {
		t.Fatal(err)
	}
	s.startRing(1, vringAddr(1, 1), kick, call)
	unix.Write(kick, eventOne[:])
	used := guest[fzRingStride+0x2000:]
	for deadline := time.Now().Add(5 * time.Second); binary.LittleEndian.Uint16(used[2:]) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the chain was not completed")
		}
		time.Sleep(time.Millisecond)
	}
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ev)
	st, ok := s.requestWithin(SetVringCall, u64le(1), 3*time.Second, ev)
	if !ok {
		t.Fatal("SET_VRING_CALL unanswered: the worker is stuck writing the full call eventfd")
	}
	if st != 0 {
		t.Fatal("SET_VRING_CALL refused")
	}
}

// TestKickEpollNoSpin: an epoll descriptor holding a readable eventfd is an
// anonymous inode too, so it passes as a kick; it polls readable for good
// and its read fails. The worker stops waiting on it instead of spinning
// its thread.
func TestKickEpollNoSpin(t *testing.T) {
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		t.Fatal(err)
	}
	fillGuest(guest, nil)
	s := newTestSession(t)
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, guestFd)
	ev, err := unix.Eventfd(1, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ev)
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev)}); err != nil {
		t.Fatal(err)
	}
	call, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(call)
	s.startRing(1, vringAddr(1, 1), ep, call)
	time.Sleep(100 * time.Millisecond)
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	time.Sleep(500 * time.Millisecond)
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	t.Logf("CPU over 500 ms with an epoll kick: %v", cpu)
	if cpu > 150*time.Millisecond {
		t.Errorf("the worker spins on an epoll kick: %v of CPU in 500 ms", cpu)
	}
}
