package frontend_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"golang.org/x/sys/unix"
)

// Memory layout changes while a request is in flight.
//
// A worker that serves a chain holds the memory layout the chain came
// from; the front-end may change the layout meanwhile, any number of
// times (QEMU sends its REM_MEM_REGs back to back). Whatever it does, the
// memory the held layout maps must stay mapped until the worker lets go:
// the reply is written into it, and the chain is returned through the used
// ring the ring was last bound to. A SETUPMAPPING keeps the daemon
// mid-chain for as long as the front-end likes: the worker waits for the
// VMM's answer on the back-end channel, which these cases serve
// themselves, answering a map request only once the layout changes are
// done.

func init() { moreHostileCases = append(moreHostileCases, hostileMemoryCases) }

// hMemExtraGPA is the guest address of the extra region.
const hMemExtraGPA = 8 << 30

// hMemExtra is a region of a memfd of the case's own, mapped here too.
type hMemExtra struct {
	r   virtqueue.Region
	fd  int
	mem []byte
}

// hMemHold is one case's back-end channel and memory.
type hMemHold struct {
	conn   *vhostuser.Conn
	mapReq chan struct{} // a map request arrived and waits
	answer chan struct{} // answer it
	served chan error    // the channel server's end
	// extras take turns as the extra region: extras[cur] is shared.
	extras [2]hMemExtra
	cur    int
}

// hMemSetup replaces the harness's back-end channel with one whose map
// requests wait for answer, and makes the extra regions, sharing the
// first.
func hMemSetup(h *hctx) (*hMemHold, error) {
	conn, peer, err := frontend.Socketpair()
	if err != nil {
		return nil, err
	}
	m := &hMemHold{conn: conn, mapReq: make(chan struct{}, 1), answer: make(chan struct{}, 1), served: make(chan error, 1)}
	h.cleanup = append(h.cleanup, func() { conn.Close() })
	err = h.fe.Request(vhostuser.SetBackendReqFd, nil, int(peer.Fd()))
	peer.Close()
	if err != nil {
		return nil, fmt.Errorf("SET_BACKEND_REQ_FD: %w", err)
	}
	go m.serve()
	const size = 2 << 20
	for i := range m.extras {
		fd, err := unix.MemfdCreate(fmt.Sprintf("hostile-extra-%d", i), unix.MFD_CLOEXEC)
		if err != nil {
			return nil, err
		}
		h.cleanup = append(h.cleanup, func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, size); err != nil {
			return nil, err
		}
		// The front-end's own mapping, whose address it reports as
		// QEMU does.
		b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return nil, err
		}
		h.cleanup = append(h.cleanup, func() { unix.Munmap(b) })
		m.extras[i] = hMemExtra{r: virtqueue.Region{GuestAddr: hMemExtraGPA, Size: size, UserAddr: uint64(uintptr(unsafe.Pointer(&b[0])))}, fd: fd, mem: b}
	}
	if err := h.fe.Request(vhostuser.AddMemReg, frontend.MemRegPayload(m.extras[0].r), m.extras[0].fd); err != nil {
		return nil, fmt.Errorf("ADD_MEM_REG of the extra region: %w", err)
	}
	return m, nil
}

// serve answers the daemon's back-end requests with success, each map
// request once it is told to.
func (m *hMemHold) serve() {
	for {
		msg, err := m.conn.Read()
		if err != nil {
			if errors.Is(err, vhostuser.ErrClosed) {
				err = nil
			}
			m.served <- err
			return
		}
		msg.CloseFds()
		if msg.Request == frontend.BackendFSMap || msg.Request == frontend.BackendShmemMap {
			m.mapReq <- struct{}{}
			<-m.answer
		}
		if msg.NeedsReply() {
			if err := m.conn.ReplyU64(msg.Request, 0); err != nil {
				m.served <- err
				return
			}
		}
	}
}

// held sends a SETUPMAPPING whose reply goes to guest address out (reply
// being the front-end's view of it), waits until the daemon asks the VMM
// for the mapping, runs change while the daemon waits for the answer,
// answers, and checks the reply.
func (m *hMemHold) held(h *hctx, out uint64, reply []byte, change func() error) error {
	req := h.req(fuseclient.OpSetupMap, h.probe, hle(^uint64(0), uint64(0), uint64(4096), uint64(2), uint64(0)), 0)
	n := h.putIn(req)
	clear(reply[:16])
	h.r.Bufs, h.r.Readable, h.r.Direct = []virtqueue.Buffer{{Addr: h.in, Len: n}, {Addr: out, Len: 4096}}, 1, true
	if err := h.q.Submit(h.r); err != nil {
		return err
	}
	select {
	case <-m.mapReq:
	case err := <-m.served:
		return fmt.Errorf("the back-end channel ended before the map request: %v", err)
	case <-time.After(hChainTimeout):
		return errors.New("SETUPMAPPING sent no map request")
	}
	cerr := change()
	m.answer <- struct{}{}
	if err := h.q.WaitTimeout(h.r, hChainTimeout); err != nil {
		return errors.Join(cerr, fmt.Errorf("SETUPMAPPING not completed: %w", err))
	}
	if cerr != nil {
		return cerr
	}
	length, status, unique := binary.LittleEndian.Uint32(reply), int32(binary.LittleEndian.Uint32(reply[4:])), binary.LittleEndian.Uint64(reply[8:])
	h.logf("SETUPMAPPING answered across the layout changes: used %d, status %d", h.r.UsedLen, status)
	if h.r.UsedLen != 16 || length != 16 || status != 0 || unique != binary.LittleEndian.Uint64(req[8:]) {
		return fmt.Errorf("SETUPMAPPING reply in the memory it was sent to: used %d, header length %d status %d (%v) unique %d, want 16 bytes of success for unique %d",
			h.r.UsedLen, length, status, hErrnoName(status), unique, binary.LittleEndian.Uint64(req[8:]))
	}
	return nil
}

// memTable sends SET_MEM_TABLE with the harness's regions, mapped afresh.
func memTable(h *hctx) error {
	regions := h.fe.Mem.Regions()
	fds := make([]int, len(regions))
	for i := range fds {
		fds[i] = h.fe.Mem.Fd()
	}
	return h.fe.Request(vhostuser.SetMemTable, frontend.MemTablePayload(regions), fds...)
}

func hostileMemoryCases() []hcase {
	dax := []string{"--dax-window-size", "64M"}
	opts := frontend.Options{Memory: hTwoRegionsContiguous, WindowSize: hWinSize}
	var rem, table *hMemHold
	var tableOut uint64
	return []hcase{
		// Region 1 and the extra region go, then region 1 and the
		// other extra region come (all mapped afresh) before the reply
		// is written through the held layout into the extra region
		// that went, on its memfd; the next repetition does the same
		// the other way round.
		{cat: "fuse", name: "REM_MEM_REG of two regions, then ADD_MEM_REG, while a SETUPMAPPING waits, its reply in the second removed",
			want: "the reply lands in the removed region through the layout the request holds; the daemon survives and serves",
			opts: opts, extra: dax, refSkip: refDAX,
			setup: func(h *hctx) (err error) {
				rem, err = hMemSetup(h)
				return err
			},
			run: func(h *hctx) error {
				high := h.fe.Mem.Regions()[1]
				gone, next := &rem.extras[rem.cur], &rem.extras[1-rem.cur]
				clear(next.mem[:16])
				if err := rem.held(h, hMemExtraGPA, gone.mem, func() error {
					if err := h.fe.Request(vhostuser.RemMemReg, frontend.MemRegPayload(high)); err != nil {
						return fmt.Errorf("REM_MEM_REG of region 1: %w", err)
					}
					if err := h.fe.Request(vhostuser.RemMemReg, frontend.MemRegPayload(gone.r)); err != nil {
						return fmt.Errorf("REM_MEM_REG of the extra region: %w", err)
					}
					if err := h.fe.Request(vhostuser.AddMemReg, frontend.MemRegPayload(high), h.fe.Mem.Fd()); err != nil {
						return fmt.Errorf("ADD_MEM_REG of region 1 again: %w", err)
					}
					if err := h.fe.Request(vhostuser.AddMemReg, frontend.MemRegPayload(next.r), next.fd); err != nil {
						return fmt.Errorf("ADD_MEM_REG of the other extra region: %w", err)
					}
					rem.cur = 1 - rem.cur
					return nil
				}); err != nil {
					return err
				}
				if !bytes.Equal(next.mem[:16], make([]byte, 16)) {
					return errors.New("the reply was written into the extra region added in place of the one the request holds")
				}
				// And the daemon serves on.
				_, err := h.expectOK(h.req(fuseclient.OpGetattr, fuseclient.RootID, make([]byte, 16), 0), 4096)
				return err
			}},
		// The pool's other worker serves a request between the tables,
		// moving the ring to the second; the third must not unmap the
		// used ring the waiting request is returned through.
		{cat: "fuse", name: "SET_MEM_TABLE, a request, SET_MEM_TABLE while a SETUPMAPPING waits (thread pool)",
			want: "the waiting request is returned through the ring the other pool worker re-bound; the daemon survives and serves",
			opts: opts, extra: append([]string{"--thread-pool-size=2"}, dax...), refSkip: refDAX,
			setup: func(h *hctx) (err error) {
				if table, err = hMemSetup(h); err != nil {
					return err
				}
				tableOut, err = h.fe.Mem.AllocIn(1, 4096)
				return err
			},
			run: func(h *hctx) error {
				return table.held(h, tableOut, h.guest(tableOut, 16), func() error {
					if err := memTable(h); err != nil {
						return fmt.Errorf("first SET_MEM_TABLE: %w", err)
					}
					if _, err := h.c.GetAttr(fuseclient.RootID); err != nil {
						return fmt.Errorf("GETATTR between the tables: %w", err)
					}
					if err := memTable(h); err != nil {
						return fmt.Errorf("second SET_MEM_TABLE: %w", err)
					}
					return nil
				})
			}},
	}
}
