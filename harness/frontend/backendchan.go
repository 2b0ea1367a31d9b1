package frontend

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"golang.org/x/sys/unix"
)

// Back-end to front-end requests on the back-end channel.
const (
	BackendIOTLBMsg      vhostuser.Request = 1
	BackendConfigChange  vhostuser.Request = 2
	BackendVringNotifier vhostuser.Request = 3
)

// The DAX requests on the back-end channel, vhostuser's own.
const (
	BackendFSMap      = vhostuser.BackendFSMap      // legacy virtio-fs DAX map
	BackendFSUnmap    = vhostuser.BackendFSUnmap    // legacy virtio-fs DAX unmap
	BackendFSSync     = vhostuser.BackendFSSync     // legacy virtio-fs DAX msync
	BackendShmemMap   = vhostuser.BackendShmemMap   // generic SHMEM_MAP (40-byte payload); legacy FS_IO shares the id
	BackendShmemUnmap = vhostuser.BackendShmemUnmap // generic SHMEM_UNMAP
)

// Payload layouts of the DAX messages, as vhostuser encodes them
// (vhostuser.ShmemMap, vhostuser.FSMsg).
const (
	// ShmemMsgSize is the payload of SHMEM_MAP/SHMEM_UNMAP.
	ShmemMsgSize = vhostuser.ShmemMapSize
	// ShmemFlagRW maps read-write (else read-only).
	ShmemFlagRW = vhostuser.ShmemMapRW
	// FSMsgSlots is the number of ranges in a legacy FS_* message.
	FSMsgSlots = vhostuser.FSMsgSlots
	// FSMsgSize is the legacy payload.
	FSMsgSize = vhostuser.FSMsgSize
	// FSFlagRead and FSFlagWrite are the legacy slot flags.
	FSFlagRead  = vhostuser.FSFlagRead
	FSFlagWrite = vhostuser.FSFlagWrite
)

// ShmemMsg is the payload of SHMEM_MAP and SHMEM_UNMAP: vhostuser.ShmemMap,
// whose fields it has.
type ShmemMsg vhostuser.ShmemMap

// Encode returns the wire form.
func (m ShmemMsg) Encode() []byte { return vhostuser.Encode(vhostuser.ShmemMap(m)) }

// DecodeShmemMsg parses a SHMEM_MAP/SHMEM_UNMAP payload, which must be
// exactly ShmemMsgSize bytes.
func DecodeShmemMsg(p []byte) (ShmemMsg, error) {
	m, err := vhostuser.DecodeExact[vhostuser.ShmemMap](p)
	if err != nil {
		return ShmemMsg{}, fmt.Errorf("shmem message %w", err)
	}
	return ShmemMsg(m), nil
}

// FSSlot is one range of a legacy FS_MAP/FS_UNMAP/FS_SYNC message
// (vhostuser.FSSlot; COffset is its CacheOffset).
type FSSlot struct {
	FdOffset, COffset, Len, Flags uint64
}

// FSMsg is the legacy 8-slot payload (vhostuser.FSMsg); slots with Len 0
// are unused.
type FSMsg [FSMsgSlots]FSSlot

// Encode returns the wire form.
func (m *FSMsg) Encode() []byte {
	var v vhostuser.FSMsg
	for i, s := range m {
		v.Slots[i] = vhostuser.FSSlot{FdOffset: s.FdOffset, CacheOffset: s.COffset, Len: s.Len, Flags: s.Flags}
	}
	return vhostuser.Encode(v)
}

// DecodeFSMsg parses a legacy payload, which must be exactly FSMsgSize
// bytes.
func DecodeFSMsg(p []byte) (FSMsg, error) {
	var m FSMsg
	v, err := vhostuser.DecodeExact[vhostuser.FSMsg](p)
	if err != nil {
		return m, fmt.Errorf("virtio-fs message %w", err)
	}
	for i, s := range v.Slots {
		m[i] = FSSlot{FdOffset: s.FdOffset, COffset: s.CacheOffset, Len: s.Len, Flags: s.Flags}
	}
	return m, nil
}

// BackendServer serves the front-end side of the back-end channel: the
// socket whose other end went to the back-end with SET_BACKEND_REQ_FD. It
// answers DAX map requests against its windows (indexed by shmid; virtio-fs
// has only shmid 0) and acknowledges with u64 0 (success) or 1 (failure,
// as QEMU answers) when the back-end asks for a reply.
type BackendServer struct {
	conn    *vhostuser.Conn
	windows []*Window

	mu      sync.Mutex
	counts  map[vhostuser.Request]int
	failed  int
	lastErr error
	done    chan struct{}
	err     error
}

// NewBackendServer serves conn (one end of a unix stream socketpair) for
// the given windows. Call Serve, usually in a goroutine.
func NewBackendServer(conn *vhostuser.Conn, windows ...*Window) *BackendServer {
	return &BackendServer{conn: conn, windows: windows, counts: map[vhostuser.Request]int{}, done: make(chan struct{})}
}

// Socketpair returns a connected unix stream socket pair: a Conn for this
// side and an *os.File for the peer (to pass with SET_BACKEND_REQ_FD, or to
// wrap with PeerConn in tests).
func Socketpair() (*vhostuser.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("frontend: socketpair: %w", err)
	}
	c, err := PeerConn(os.NewFile(uintptr(fds[0]), "backend-channel"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "backend-channel-peer"), nil
}

// PeerConn wraps a unix stream socket file in a vhostuser.Conn; it closes f
// (the Conn holds a duplicate).
func PeerConn(f *os.File) (*vhostuser.Conn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("frontend: %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("frontend: %s is not a unix socket", f.Name())
	}
	return vhostuser.NewConn(uc), nil
}

// Window returns the window for shmid, or nil.
func (s *BackendServer) Window(shmid int) *Window {
	if shmid < 0 || shmid >= len(s.windows) {
		return nil
	}
	return s.windows[shmid]
}

// Count returns how many requests of type req have arrived.
func (s *BackendServer) Count(req vhostuser.Request) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[req]
}

// Failures returns how many requests failed and the last failure.
func (s *BackendServer) Failures() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed, s.lastErr
}

// Done is closed when Serve returns.
func (s *BackendServer) Done() <-chan struct{} { return s.done }

// Err returns Serve's error once Done is closed (nil on an orderly close).
func (s *BackendServer) Err() error {
	<-s.done
	return s.err
}

// Close closes the channel; Serve returns.
func (s *BackendServer) Close() error { return s.conn.Close() }

// Serve answers requests until the peer closes the channel.
func (s *BackendServer) Serve() error {
	defer close(s.done)
	for {
		m, err := s.conn.Read()
		if err != nil {
			if errors.Is(err, vhostuser.ErrClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.err = fmt.Errorf("frontend: back-end channel: %w", err)
			return s.err
		}
		herr := s.handle(m)
		m.CloseFds()
		s.mu.Lock()
		s.counts[m.Request]++
		if herr != nil {
			s.failed++
			s.lastErr = fmt.Errorf("back-end request %d: %w", uint32(m.Request), herr)
		}
		s.mu.Unlock()
		if m.NeedsReply() {
			status := uint64(0)
			if herr != nil {
				status = 1
			}
			if err := s.conn.ReplyU64(m.Request, status); err != nil {
				s.err = fmt.Errorf("frontend: back-end channel reply: %w", err)
				return s.err
			}
		}
	}
}

func (s *BackendServer) window(shmid int) (*Window, error) {
	w := s.Window(shmid)
	if w == nil {
		return nil, fmt.Errorf("no shared memory region %d", shmid)
	}
	return w, nil
}

// shmemFileCheck refuses what QEMU 11.1's SHMEM_MAP refuses, which a
// plain mmap would take: a range that reaches past the end of its file
// (qemu_ram_alloc_from_fd: "backing store size ... is too small"). An empty
// file is refused too: QEMU would extend a writable one to the mapping's
// size, changing the file under the guest.
func shmemFileCheck(fd int, off, length uint64) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		switch {
		case st.Size == 0:
			return fmt.Errorf("SHMEM_MAP of an empty file (QEMU 11.1 would extend it to %#x bytes)", off+length)
		case uint64(st.Size) < off+(length+pageSize-1)&^(pageSize-1):
			return fmt.Errorf("SHMEM_MAP: backing store size %#x is too small for %#x+%#x (QEMU 11.1 refuses)", st.Size, off, length)
		}
	}
	return nil
}

func (s *BackendServer) handle(m *vhostuser.Message) error {
	switch m.Request {
	case BackendShmemMap:
		if len(m.Payload) == FSMsgSize {
			return errors.New("legacy FS_IO is not supported")
		}
		p, err := DecodeShmemMsg(m.Payload)
		if err != nil {
			return err
		}
		fd, err := m.TakeFd()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		w, err := s.window(int(p.ShmID))
		if err != nil {
			return err
		}
		if p.Flags&^ShmemFlagRW != 0 {
			return fmt.Errorf("unknown SHMEM_MAP flags %#x", p.Flags)
		}
		prot := unix.PROT_READ
		if p.Flags&ShmemFlagRW != 0 {
			prot |= unix.PROT_WRITE
		}
		if err := shmemFileCheck(fd, p.FdOffset, p.Len); err != nil {
			return err
		}
		return w.Map(fd, p.FdOffset, p.ShmOffset, p.Len, prot, false)
	case BackendShmemUnmap:
		p, err := DecodeShmemMsg(m.Payload)
		if err != nil {
			return err
		}
		w, err := s.window(int(p.ShmID))
		if err != nil {
			return err
		}
		return w.Unmap(p.ShmOffset, p.Len, true)
	case BackendFSMap:
		p, err := DecodeFSMsg(m.Payload)
		if err != nil {
			return err
		}
		fd, err := m.TakeFd()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		w, err := s.window(0)
		if err != nil {
			return err
		}
		for i, sl := range p {
			if sl.Len == 0 {
				continue
			}
			if sl.Flags&^(FSFlagRead|FSFlagWrite) != 0 {
				return fmt.Errorf("slot %d: unknown flags %#x", i, sl.Flags)
			}
			prot := 0
			if sl.Flags&FSFlagRead != 0 {
				prot |= unix.PROT_READ
			}
			if sl.Flags&FSFlagWrite != 0 {
				prot |= unix.PROT_WRITE
			}
			if err := w.Map(fd, sl.FdOffset, sl.COffset, sl.Len, prot, true); err != nil {
				// Undo the slots already mapped by this message.
				for _, done := range p[:i] {
					if done.Len != 0 {
						w.Unmap(done.COffset, done.Len, false)
					}
				}
				return fmt.Errorf("slot %d: %w", i, err)
			}
		}
		return nil
	case BackendFSUnmap:
		p, err := DecodeFSMsg(m.Payload)
		if err != nil {
			return err
		}
		w, err := s.window(0)
		if err != nil {
			return err
		}
		var errs []error
		for i, sl := range p {
			if sl.Len == 0 {
				continue
			}
			off, n := sl.COffset, sl.Len
			if n == ^uint64(0) {
				off, n = 0, w.Size()
			}
			if err := w.Unmap(off, n, false); err != nil {
				errs = append(errs, fmt.Errorf("slot %d: %w", i, err))
			}
		}
		return errors.Join(errs...)
	case BackendFSSync:
		p, err := DecodeFSMsg(m.Payload)
		if err != nil {
			return err
		}
		w, err := s.window(0)
		if err != nil {
			return err
		}
		for i, sl := range p {
			if sl.Len == 0 {
				continue
			}
			if err := w.Sync(sl.COffset, sl.Len); err != nil {
				return fmt.Errorf("slot %d: %w", i, err)
			}
		}
		return nil
	default:
		return fmt.Errorf("unsupported back-end request %d", uint32(m.Request))
	}
}
