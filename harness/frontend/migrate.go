package frontend

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"golang.org/x/sys/unix"
)

// MigrationProtocolFeatures adds what QEMU acks for a migratable
// vhost-user-fs back-end (LOG_SHMFD, DEVICE_STATE) to QEMU's usual set.
const MigrationProtocolFeatures = DefaultProtocolFeatures | vhostuser.ProtocolLogShmfd | vhostuser.ProtocolDeviceState

// DirtyLog is a dirty page bitmap shared with the back-end by SetLogBase,
// one bit per 4 KiB guest page, as QEMU keeps it.
type DirtyLog struct {
	fd   int
	mem  []byte
	size uint64
}

// SetLogBase shares a fresh bitmap covering all guest RAM with
// SET_LOG_BASE and waits for the back-end's reply (LOG_SHMFD).
func (f *Frontend) SetLogBase() (*DirtyLog, error) {
	var top uint64
	for _, r := range f.Mem.Regions() {
		top = max(top, r.GuestAddr+r.Size)
	}
	// Whole u64 chunks, as QEMU sizes it.
	size := (top/4096 + 63) / 64 * 8
	fd, err := unix.MemfdCreate("dirty-log", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	l := &DirtyLog{fd: fd, mem: mem, size: size}
	p := vhostuser.Encode(vhostuser.LogArea{Size: size})
	if _, err := f.Call(vhostuser.SetLogBase, p, fd); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Dirty reports whether the page holding gpa is marked.
func (l *DirtyLog) Dirty(gpa uint64) bool {
	p := gpa / 4096
	if p/8 >= l.size {
		return false
	}
	w := (*uint32)(unsafe.Pointer(&l.mem[p/32*4]))
	return atomic.LoadUint32(w)&(1<<(p%32)) != 0
}

// Pages returns the marked page numbers and clears them, as QEMU's sync
// does.
func (l *DirtyLog) Pages() []uint64 {
	var out []uint64
	for i := uint64(0); i+4 <= l.size; i += 4 {
		w := atomic.SwapUint32((*uint32)(unsafe.Pointer(&l.mem[i])), 0)
		for b := uint64(0); w != 0; b++ {
			if w&1 != 0 {
				out = append(out, i*8+b)
			}
			w >>= 1
		}
	}
	return out
}

// Close unmaps the bitmap.
func (l *DirtyLog) Close() {
	unix.Munmap(l.mem)
	unix.Close(l.fd)
}

// SetLogAll sends SET_FEATURES again with VHOST_F_LOG_ALL on or off.
func (f *Frontend) SetLogAll(on bool) error {
	feats := f.neg.Features &^ vhostuser.FeatureLogAll
	if on {
		feats |= vhostuser.FeatureLogAll
	}
	if err := f.Request(vhostuser.SetFeatures, u64(feats)); err != nil {
		return err
	}
	f.neg.Features = feats
	return nil
}

// UsedRing returns the guest address and size of queue i's used ring.
func (f *Frontend) UsedRing(i int) (gpa, size uint64) {
	q := f.queues[i]
	return q.d.Addresses(0).Used, 6 + 8*uint64(q.d.Size())
}

// LogUsedRing re-sends queue i's SET_VRING_ADDR with VHOST_VRING_F_LOG and
// the used ring's guest address (on) or without (off), as QEMU does when
// migration starts and ends.
func (f *Frontend) LogUsedRing(i int, on bool) error {
	q := f.queues[i]
	low := f.Mem.Regions()[0]
	a := q.d.Addresses(low.UserAddr - low.GuestAddr)
	addr := vhostuser.VringAddr{Index: uint32(i), Descriptor: a.Desc, Used: a.Used, Available: a.Avail}
	if on {
		addr.Flags, addr.Log = vhostuser.VringFlagLog, q.d.Addresses(0).Used
	}
	return f.Request(vhostuser.SetVringAddr, vhostuser.Encode(addr))
}

// StateError is a refused or failed device state transfer.
type StateError struct {
	Request vhostuser.Request
	Status  uint64
}

func (e *StateError) Error() string {
	return fmt.Sprintf("frontend: %v answered %#x", e.Request, e.Status)
}

func (f *Frontend) setDeviceStateFd(dir uint32, fd int) error {
	p := vhostuser.Encode(vhostuser.DeviceStateTransfer{Direction: dir, Phase: vhostuser.StatePhaseStopped})
	b, err := f.Call(vhostuser.SetDeviceStateFd, p, fd)
	if err != nil {
		return err
	}
	r, err := vhostuser.DecodeExact[vhostuser.U64](b)
	if err != nil {
		return fmt.Errorf("frontend: SET_DEVICE_STATE_FD reply of %d bytes", len(b))
	}
	v := r.Value
	if v&0xff != 0 {
		return &StateError{Request: vhostuser.SetDeviceStateFd, Status: v}
	}
	if v&vhostuser.VringNoFd == 0 {
		return errors.New("frontend: the back-end wants to send its own state fd, which this front-end does not take")
	}
	return nil
}

// CheckDeviceState sends CHECK_DEVICE_STATE and fails unless the back-end
// answers 0.
func (f *Frontend) CheckDeviceState() error {
	v, err := f.CallU64(vhostuser.CheckDeviceState, nil)
	if err != nil {
		return err
	}
	if v != 0 {
		return &StateError{Request: vhostuser.CheckDeviceState, Status: v}
	}
	return nil
}

// SaveState fetches the back-end's state as QEMU does on the source: the
// rings must be stopped (Stop or Pause); SET_DEVICE_STATE_FD(save) with a
// pipe, read it to end of file, CHECK_DEVICE_STATE.
func (f *Frontend) SaveState() ([]byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	err = f.setDeviceStateFd(vhostuser.StateSave, int(w.Fd()))
	w.Close()
	if err != nil {
		return nil, err
	}
	state, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return state, f.CheckDeviceState()
}

// LoadState hands the back-end a state as QEMU does on the destination,
// before the rings start: SET_DEVICE_STATE_FD(load) with a pipe, write the
// state, close, CHECK_DEVICE_STATE.
func (f *Frontend) LoadState(state []byte) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	err = f.setDeviceStateFd(vhostuser.StateLoad, int(r.Fd()))
	r.Close()
	if err != nil {
		w.Close()
		return err
	}
	_, werr := w.Write(state)
	w.Close()
	if werr != nil && !errors.Is(werr, unix.EPIPE) {
		return werr
	}
	return f.CheckDeviceState()
}
