package vhostuser

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// Dirty logging for live migration.
//
// While the front-end migrates the guest it copies guest RAM in passes and
// must learn which pages changed since the last pass. Pages the back-end
// writes (replies in device-writable descriptors, the used rings) are
// invisible to it, so with VHOST_F_LOG_ALL acked the back-end sets a bit per
// 4 KiB guest-physical page it wrote in a bitmap the front-end shares with
// SET_LOG_BASE. The front-end collects the bits by swapping words to zero,
// so every update is an atomic OR.
//
// Logging can be switched on and off while rings run (SET_FEATURES again).
// When it is off the request path pays one atomic load; when it is on, it
// maps each written segment back to its guest-physical address through the
// memory table (segments are host slices) and sets the bits. The writes are
// logged before the chain is returned to the pool or the ring stops, so by
// the time GET_VRING_BASE answers every write of the stopped ring is in the
// log.

// FeatureLogAll is VHOST_F_LOG_ALL: log every write to guest memory.
const FeatureLogAll = 1 << 26

const (
	logPageShift = 12
	// maxLogSize bounds the bitmap a front-end may hand over: one bit
	// per 4 KiB page of 1<<52 bytes of guest-physical space.
	maxLogSize = 1 << 37
)

// dirtyLog is one bitmap the front-end shared with SET_LOG_BASE. Workers
// hold a reference while they write to it; a replaced log is unmapped when
// the last of them lets go.
type dirtyLog struct {
	mapping []byte
	words   []uint32 // the bitmap as 32-bit words (little endian: bit p%32 of word p/32 is bit p%8 of byte p/8)
	refs    atomic.Int64
	done    atomic.Bool
}

func (l *dirtyLog) addRef() { l.refs.Add(1) }

func (l *dirtyLog) release() {
	if l.refs.Add(-1) == 0 && l.done.CompareAndSwap(false, true) {
		unix.Munmap(l.mapping)
	}
}

// markRange sets the bits of every page that [gpa, gpa+n) touches. Pages
// past the end of the bitmap are ignored: the front-end sized it for all
// guest RAM, so such an address is not RAM.
func (l *dirtyLog) markRange(gpa, n uint64) {
	if n == 0 || gpa+n < gpa {
		return
	}
	last := (gpa + n - 1) >> logPageShift
	for p := gpa >> logPageShift; p <= last; p++ {
		w := p / 32
		if w >= uint64(len(l.words)) {
			return
		}
		atomic.OrUint32(&l.words[w], 1<<(p%32))
	}
}

// markHost logs seg, a slice of guest memory, by finding the region it lies
// in. A segment outside every region (its region was removed since) is not
// RAM any more and needs no logging.
func (l *dirtyLog) markHost(mem *virtqueue.MemoryTable, seg []byte) {
	if len(seg) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(seg)))
	for _, r := range mem.Regions() {
		data := r.Bytes()
		if len(data) == 0 {
			continue
		}
		base := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
		if p >= base && p-base < uintptr(len(data)) {
			l.markRange(r.GuestAddr+uint64(p-base), uint64(len(seg)))
			return
		}
	}
}

// mapDirtyLog maps the bitmap SET_LOG_BASE describes.
func mapDirtyLog(fd int, size, offset uint64) (*dirtyLog, error) {
	if size == 0 || size > maxLogSize || offset > maxLogSize || offset%8 != 0 {
		return nil, fmt.Errorf("dirty log of %d bytes at offset %d", size, offset)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("dirty log: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < offset+size {
		return nil, fmt.Errorf("dirty log needs %d bytes of its file, which has %d", offset+size, st.Size)
	}
	m, err := unix.Mmap(fd, 0, int(offset+size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap dirty log (%d bytes): %w", offset+size, err)
	}
	b := m[offset:]
	l := &dirtyLog{mapping: m, words: unsafe.Slice((*uint32)(unsafe.Pointer(&b[0])), size/4)}
	l.refs.Store(1)
	return l, nil
}

// logState is the back-end's migration logging state.
type logState struct {
	// on mirrors LOG_ALL in the last SET_FEATURES.
	on  atomic.Bool
	log atomic.Pointer[dirtyLog]
}

// acquire returns the current log with a reference, or nil.
func (s *logState) acquire() *dirtyLog { return acquire(&s.log) }

// replace installs l (nil drops the log).
func (s *logState) replace(l *dirtyLog) {
	if old := s.log.Swap(l); old != nil {
		old.release()
	}
}

// setLogBaseReply answers SET_LOG_BASE, whose outcome is err. With
// LOG_SHMFD the front-end waits for a reply, whatever the outcome, so one
// is always sent; without it err is returned as it is.
func (b *Backend) setLogBaseReply(err error) error {
	if b.ackedProtocol&ProtocolLogShmfd == 0 {
		return err
	}
	status := uint64(0)
	if err != nil {
		status = 1
		b.log.Errorf("SET_LOG_BASE failed: %v; pages written from now on may be missed by the migration", err)
	}
	return b.conn.ReplyU64(SetLogBase, status)
}

// setLogBase maps the dirty log l describes in fd, which it closes, and
// makes it the log.
func (b *Backend) setLogBase(l LogArea, fd int) error {
	defer unix.Close(fd)
	d, err := mapDirtyLog(fd, l.Size, l.Offset)
	if err != nil {
		return err
	}
	b.dirty.replace(d)
	return nil
}

// setUsedLog records the used ring's guest-physical address for logging,
// from SET_VRING_ADDR's flags and log address.
func (v *vring) setUsedLog(a VringAddr) {
	if a.Flags&VringFlagLog != 0 && a.Log%4 == 0 {
		v.usedLog.Store(a.Log | 1)
	} else {
		v.usedLog.Store(0)
	}
}

// logWrites logs the first n bytes of c's writable part, found in mem (the
// layout c came from), and the used ring. The caller has checked that
// logging is on.
func (v *vring) logWrites(c *virtqueue.DescriptorChain, mem *memState, n uint32) {
	l := v.b.dirty.acquire()
	if l == nil {
		return
	}
	// Deferred: the log's memory may fault (see fault).
	defer l.release()
	if n > 0 {
		left := uint64(n)
		for _, s := range c.Writable {
			if left == 0 {
				break
			}
			k := min(left, uint64(len(s)))
			l.markHost(mem.table, s[:k])
			left -= k
		}
	}
	v.logUsedRing(l)
}

// logRing logs the used ring after the worker wrote avail_event.
func (v *vring) logRing() {
	if l := v.b.dirty.acquire(); l != nil {
		defer l.release()
		v.logUsedRing(l)
	}
}

func (v *vring) logUsedRing(l *dirtyLog) {
	if a := v.usedLog.Load(); a&1 != 0 {
		// flags, idx, the ring, avail_event.
		l.markRange(a&^1, 6+8*uint64(v.num))
	}
}
