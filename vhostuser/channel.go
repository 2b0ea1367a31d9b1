package vhostuser

import (
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
	v, err := decodeMsg[U64](m)
	if err != nil {
		return err
	}
	if v.Value != 0 {
		return fmt.Errorf("front-end refused %v (status %d)", req, v.Value)
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
	m := ShmemMap{ShmID: shmid, FdOffset: fdOffset, ShmOffset: shmOffset, Len: length}
	if writable {
		m.Flags = ShmemMapRW
	}
	var p [ShmemMapSize]byte
	m.Put(p[:])
	return b.channel.request(BackendShmemMap, p[:], fd)
}

// ShmemUnmap asks the front-end to unmap a range of region shmid.
func (b *Backend) ShmemUnmap(shmid uint8, shmOffset, length uint64) error {
	var p [ShmemMapSize]byte
	ShmemMap{ShmID: shmid, ShmOffset: shmOffset, Len: length}.Put(p[:])
	return b.channel.request(BackendShmemUnmap, p[:])
}

// fsRequest sends a legacy virtio-fs request with one used slot.
func (b *Backend) fsRequest(req Request, slot FSSlot, fds ...int) error {
	var m FSMsg
	m.Slots[0] = slot
	var p [FSMsgSize]byte
	m.Put(p[:])
	return b.channel.request(req, p[:], fds...)
}

// FSMap is the legacy FS_MAP: map length bytes of fd at fdOffset at
// cacheOffset of the DAX window.
func (b *Backend) FSMap(fd int, fdOffset, cacheOffset, length uint64, writable bool) error {
	flags := uint64(FSFlagRead)
	if writable {
		flags |= FSFlagWrite
	}
	return b.fsRequest(BackendFSMap, FSSlot{FdOffset: fdOffset, CacheOffset: cacheOffset, Len: length, Flags: flags}, fd)
}

// FSUnmap is the legacy FS_UNMAP of one window range.
func (b *Backend) FSUnmap(cacheOffset, length uint64) error {
	return b.fsRequest(BackendFSUnmap, FSSlot{CacheOffset: cacheOffset, Len: length})
}
