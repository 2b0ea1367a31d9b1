package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Back-end to front-end requests on the back-end channel.
const (
	// Legacy virtio-fs DAX messages (Kata's QEMU, Cloud Hypervisor up to
	// v41, Dragonball).
	BackendFSMap   Request = 6
	BackendFSUnmap Request = 7
	BackendFSSync  Request = 8
	// Generic shared-memory messages (QEMU 11.1 with SHMEM, crosvm).
	BackendShmemMap   Request = 9
	BackendShmemUnmap Request = 10
)

const (
	shmemMsgSize = 40
	fsMsgSlots   = 8
	fsMsgSize    = 4 * 8 * fsMsgSlots
	fsFlagRead   = 1
	fsFlagWrite  = 2
)

// ErrNoBackendChannel means the front-end never sent SET_BACKEND_REQ_FD.
var ErrNoBackendChannel = errors.New("the front-end set up no back-end channel")

// channelTimeout bounds one request on the back-end channel, its sending
// and the wait for the front-end's answer. A front-end that neither reads
// nor answers would otherwise hold the worker that asked, and whoever waits
// for it (a GET_VRING_BASE, the other workers' requests), for good. After
// a timeout the channel is dropped: a late answer could not be told from
// the next request's.
var channelTimeout = 10 * time.Second

// backendChannel serialises requests on the back-end channel. It is
// separate from the control socket, so a worker waiting here for the VMM's
// answer does not stop the control goroutine.
type backendChannel struct {
	mu       sync.Mutex
	conn     *Conn
	replyAck bool
}

func (c *backendChannel) set(conn *Conn, replyAck bool) {
	c.mu.Lock()
	old := c.conn
	c.conn, c.replyAck = conn, replyAck
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// request sends req and, with REPLY_ACK, waits for the front-end's verdict,
// each at most channelTimeout: past it the channel is dropped, and every
// later request gets ErrNoBackendChannel.
func (c *backendChannel) request(req Request, payload []byte, fds ...int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return ErrNoBackendChannel
	}
	flags := uint32(FlagVersion)
	if c.replyAck {
		flags |= FlagNeedReply
	}
	if err := c.conn.uc.SetDeadline(time.Now().Add(channelTimeout)); err != nil {
		return fmt.Errorf("back-end channel %v: %w", req, err)
	}
	if err := c.conn.Write(req, flags, payload, fds...); err != nil {
		c.dropLocked(err)
		return fmt.Errorf("back-end channel %v: %w", req, err)
	}
	if !c.replyAck {
		return nil
	}
	m, err := c.conn.Read()
	if err != nil {
		c.dropLocked(err)
		return fmt.Errorf("back-end channel %v reply: %w", req, err)
	}
	m.CloseFds()
	if m.Request != req || m.Flags&FlagReply == 0 {
		return fmt.Errorf("back-end channel: %v answered with %v flags %#x", req, m.Request, m.Flags)
	}
	v, err := m.U64()
	if err != nil {
		return err
	}
	if v != 0 {
		return fmt.Errorf("front-end refused %v (status %d)", req, v)
	}
	return nil
}

// dropLocked closes the channel after a request failed with err past its
// deadline, when the stream may be out of step. The caller holds mu.
func (c *backendChannel) dropLocked(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.conn.Close()
		c.conn = nil
	}
}

// ShmemMap asks the front-end to map length bytes of fd at fdOffset into
// shared memory region shmid at shmOffset.
func (b *Backend) ShmemMap(shmid uint8, fd int, fdOffset, shmOffset, length uint64, writable bool) error {
	var p [shmemMsgSize]byte
	p[0] = shmid
	binary.LittleEndian.PutUint64(p[8:], fdOffset)
	binary.LittleEndian.PutUint64(p[16:], shmOffset)
	binary.LittleEndian.PutUint64(p[24:], length)
	if writable {
		binary.LittleEndian.PutUint64(p[32:], 1)
	}
	return b.channel.request(BackendShmemMap, p[:], fd)
}

// ShmemUnmap asks the front-end to unmap a range of region shmid.
func (b *Backend) ShmemUnmap(shmid uint8, shmOffset, length uint64) error {
	var p [shmemMsgSize]byte
	p[0] = shmid
	binary.LittleEndian.PutUint64(p[16:], shmOffset)
	binary.LittleEndian.PutUint64(p[24:], length)
	return b.channel.request(BackendShmemUnmap, p[:])
}

// fsMsg encodes a legacy virtio-fs message with one used slot.
func fsMsg(fdOffset, cacheOffset, length, flags uint64) []byte {
	p := make([]byte, fsMsgSize)
	binary.LittleEndian.PutUint64(p[0:], fdOffset)
	binary.LittleEndian.PutUint64(p[8*fsMsgSlots:], cacheOffset)
	binary.LittleEndian.PutUint64(p[16*fsMsgSlots:], length)
	binary.LittleEndian.PutUint64(p[24*fsMsgSlots:], flags)
	return p
}

// FSMap is the legacy FS_MAP: map length bytes of fd at fdOffset at
// cacheOffset of the DAX window.
func (b *Backend) FSMap(fd int, fdOffset, cacheOffset, length uint64, writable bool) error {
	flags := uint64(fsFlagRead)
	if writable {
		flags |= fsFlagWrite
	}
	return b.channel.request(BackendFSMap, fsMsg(fdOffset, cacheOffset, length, flags), fd)
}

// FSUnmap is the legacy FS_UNMAP of one window range.
func (b *Backend) FSUnmap(cacheOffset, length uint64) error {
	return b.channel.request(BackendFSUnmap, fsMsg(0, cacheOffset, length, 0))
}
