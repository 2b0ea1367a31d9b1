package vhostuser

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// setFor sets *p to v until t ends.
func setFor[T any](t *testing.T, p *T, v T) {
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}

// largeStateDevice is a fakeDevice whose state is larger than a pipe holds.
type largeStateDevice struct{ fakeDevice }

func (d *largeStateDevice) SaveState(w io.Writer) error {
	_, err := w.Write(make([]byte, 1<<20))
	return err
}

func (d *largeStateDevice) LoadState(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// TestCheckDeviceStateBounded: a front-end that starts saving the device
// state into a pipe it never reads, then sends CHECK_DEVICE_STATE. The
// control goroutine waited for the transfer without end, and saw no other
// message, a hang-up included. The wait is bounded: the transfer is ended
// and CHECK_DEVICE_STATE answered with an error, and the session serves
// on.
func TestCheckDeviceStateBounded(t *testing.T) {
	setFor(t, &checkStateTimeout, 200*time.Millisecond)
	s := newDeviceSession(t, &largeStateDevice{fakeDevice{queues: 2}}, Options{Log: quietLog()})
	s.request(SetProtocolFeatures, u64le(ProtocolReplyAck|ProtocolDeviceState|ProtocolLogShmfd|ProtocolResetDevice), false)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	if err := s.front.Write(SetDeviceStateFd, FlagVersion, u32le(StateSave, 0), p[1]); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[1])
	if m, err := s.front.Read(); err != nil || m.Request != SetDeviceStateFd {
		t.Fatalf("SET_DEVICE_STATE_FD reply: %v", err)
	}
	st, ok := s.requestWithin(CheckDeviceState, nil, 3*time.Second)
	if !ok {
		t.Fatal("CHECK_DEVICE_STATE unanswered")
	}
	if st == 0 {
		t.Error("CHECK_DEVICE_STATE reports success for a transfer the front-end never read")
	}
	if st, ok := s.requestWithin(ResetDevice, nil, 3*time.Second); !ok || st != 0 {
		t.Fatalf("RESET_DEVICE after CHECK_DEVICE_STATE: answered %v, status %d", ok, st)
	}
}

// mapDevice asks the front-end for a DAX mapping over the back-end channel
// for every chain, and passes on what the request returned.
type mapDevice struct {
	b    *Backend
	errs chan error
}

func (d *mapDevice) Features() uint64    { return 0 }
func (d *mapDevice) MaxQueues() int      { return 2 }
func (d *mapDevice) Config() []byte      { return nil }
func (d *mapDevice) NewHandler() Handler { return d }
func (d *mapDevice) Reset()              {}

func (d *mapDevice) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	f, err := os.Open("/dev/null")
	if err != nil {
		d.errs <- err
		return 0
	}
	defer f.Close()
	d.errs <- d.b.FSMap(int(f.Fd()), 0, 0, 4096, false)
	return 0
}

// TestBackendChannelSilent: a worker asks for a mapping over a back-end
// channel the front-end neither reads nor answers. It waited for the
// answer for good, and GET_VRING_BASE, which waits for the worker, was
// never answered. The request times out with an error, the channel is
// dropped, and the ring stops.
func TestBackendChannelSilent(t *testing.T) {
	setFor(t, &channelTimeout, 200*time.Millisecond)
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		t.Fatal(err)
	}
	fillGuest(guest, nil)
	front, back, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	dev := &mapDevice{errs: make(chan error, 16)}
	dev.b = NewBackend(dev, Options{Log: quietLog()})
	s := &testSession{t: t, front: NewConn(front), served: make(chan error, 1)}
	go func() { err := dev.b.Serve(back); back.Close(); s.served <- err }()
	t.Cleanup(s.hangUp)
	s.request(SetProtocolFeatures, u64le(ProtocolReplyAck|ProtocolBackendReq|ProtocolBackendSendFd), false)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0]) // never read
	if st := s.request(SetBackendReqFd, nil, true, sp[1]); st != 0 {
		t.Fatal("SET_BACKEND_REQ_FD refused")
	}
	unix.Close(sp[1])
	s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, guestFd)
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(kick)
	s.startRing(1, vringAddr(1, 1), kick, -1)
	unix.Write(kick, eventOne[:])
	select {
	case err := <-dev.errs:
		if err == nil {
			t.Fatal("FS_MAP succeeded without an answer")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("FS_MAP still waiting for the front-end's answer")
	}
	if err := s.front.Write(GetVringBase, FlagVersion, u32le(1, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.front.Read(); err != nil {
		t.Fatalf("GET_VRING_BASE: %v", err)
	}
}
