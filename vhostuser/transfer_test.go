package vhostuser

import (
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// stateDevice is a Migrator that notes what reaches it while its state is
// being saved or loaded: SaveState writes until the pipe fails, LoadState
// reads until end of file.
type stateDevice struct {
	moving   atomic.Bool // SaveState or LoadState is running
	started  chan struct{}
	served   atomic.Int32 // chains served while moving
	resetDur atomic.Int32 // resets while moving
}

func (d *stateDevice) Features() uint64    { return 0 }
func (d *stateDevice) MaxQueues() int      { return 2 }
func (d *stateDevice) Config() []byte      { return nil }
func (d *stateDevice) NewHandler() Handler { return d }

func (d *stateDevice) Reset() {
	if d.moving.Load() {
		d.resetDur.Add(1)
	}
}

func (d *stateDevice) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	if d.moving.Load() {
		d.served.Add(1)
	}
	return 0
}

func (d *stateDevice) SaveState(w io.Writer) error {
	d.moving.Store(true)
	defer d.moving.Store(false)
	d.started <- struct{}{}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := w.Write(chunk); err != nil {
			return err
		}
	}
}

func (d *stateDevice) LoadState(r io.Reader) error {
	d.moving.Store(true)
	defer d.moving.Store(false)
	d.started <- struct{}{}
	_, err := io.Copy(io.Discard, r)
	return err
}

// TestStateTransferAlone: while a device state transfer runs, the device's
// SaveState or LoadState has the device to itself (Migrator): a ring must
// not start, a reset and a disconnect must end the transfer before they
// reset the device. The front-end here neither drains nor closes its end
// of the pipe, as a hostile one need not.
func TestStateTransferAlone(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  uint32
		// during acts while the transfer waits on the pipe; it
		// reports whether the session is over.
		during func(t *testing.T, s *testSession, kick int) bool
	}{
		{"ring start during a load", StateLoad, func(t *testing.T, s *testSession, kick int) bool {
			for _, m := range []struct {
				req     Request
				payload []byte
			}{{SetVringNum, u32le(1, 16)}, {SetVringBase, u32le(1, 0)}, {SetVringAddr, vringAddr(1, 1)}} {
				if st := s.request(m.req, m.payload, true); st != 0 {
					t.Fatalf("%v refused", m.req)
				}
			}
			if st := s.request(SetVringKick, u64le(1), true, kick); st == 0 {
				t.Error("a ring started while the device state was being loaded")
			}
			return false
		}},
		{"RESET_DEVICE during a load", StateLoad, func(t *testing.T, s *testSession, kick int) bool {
			s.request(ResetDevice, nil, true)
			return false
		}},
		{"disconnect during a save", StateSave, func(t *testing.T, s *testSession, kick int) bool {
			start := time.Now()
			s.hangUp()
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Serve took %v to return with a transfer stuck on its pipe", d)
			}
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, m := testGuest(t, "transfer-guest", 1<<20)
			fillGuest(m, nil)
			dev := &stateDevice{started: make(chan struct{}, 1)}
			s := newDeviceSession(t, dev, Options{Log: quietLog()})
			s.request(SetProtocolFeatures, u64le(ProtocolReplyAck|ProtocolConfigureMemSlots|ProtocolDeviceState), false)
			s.request(SetMemTable, append(u32le(1, 0), region(0, 1<<20, fzUserBase, 0)...), true, fd)
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			// The test keeps its end open throughout.
			mine, theirs := p[1], p[0]
			if tc.dir == StateSave {
				mine, theirs = p[0], p[1]
			}
			closeMine := sync.OnceFunc(func() { unix.Close(mine) })
			defer closeMine()
			st := s.request(SetDeviceStateFd, u32le(tc.dir, StatePhaseStopped), true, theirs)
			unix.Close(theirs)
			if st != stateReplyNoFd {
				t.Fatalf("SET_DEVICE_STATE_FD answered %#x", st)
			}
			select {
			case <-dev.started:
			case <-time.After(fzWait):
				t.Fatal("the transfer did not start")
			}
			kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(kick)
			over := tc.during(t, s, kick)
			if !over {
				// The ring may start once the transfer is over.
				if tc.dir == StateLoad {
					closeMine() // end of file
				}
				s.request(CheckDeviceState, nil, true)
				s.startRing(1, vringAddr(1, 1), kick, -1)
				time.Sleep(50 * time.Millisecond)
				s.hangUp()
			}
			if n := dev.served.Load(); n > 0 {
				t.Errorf("%d chains were served while the device state was being transferred", n)
			}
			if n := dev.resetDur.Load(); n > 0 {
				t.Errorf("the device was reset %d times while its state was being transferred", n)
			}
		})
	}
}
