// Package vhostuser speaks the vhost-user control protocol on a unix socket:
// feature negotiation, the guest memory table, ring setup and the back-end
// channel.
//
// It is the top of the daemon's data path. It builds virtqueue memory tables
// and rings from what the front-end sends and hands descriptor chains to a
// Device; it knows nothing of FUSE. Everything the front-end sends is
// validated here (sizes, indices, fd counts) before it reaches a ring; the
// message codec (Conn, and the payload types of payload.go) is shared with
// the test front-end so that both sides read and write the wire format
// through one piece of code.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Request is a vhost-user message type.
type Request uint32

// Front-end to back-end requests.
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFd            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	SendRarp            Request = 19
	NetSetMTU           Request = 20
	SetBackendReqFd     Request = 21
	IOTLBMsg            Request = 22
	SetVringEndian      Request = 23
	GetConfig           Request = 24
	SetConfig           Request = 25
	GetInflightFd       Request = 31
	SetInflightFd       Request = 32
	ResetDevice         Request = 34
	GetMaxMemSlots      Request = 36
	AddMemReg           Request = 37
	RemMemReg           Request = 38
	SetStatus           Request = 39
	GetStatus           Request = 40
	SetDeviceStateFd    Request = 42
	CheckDeviceState    Request = 43
	GetShmemConfig      Request = 44
)

var requestNames = map[Request]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER",
	ResetOwner: "RESET_OWNER", SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE",
	SetLogFd: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM", SetVringAddr: "SET_VRING_ADDR",
	SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE", SetVringKick: "SET_VRING_KICK",
	SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES", SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE", SendRarp: "SEND_RARP",
	NetSetMTU: "NET_SET_MTU", SetBackendReqFd: "SET_BACKEND_REQ_FD", IOTLBMsg: "IOTLB_MSG",
	SetVringEndian: "SET_VRING_ENDIAN", GetConfig: "GET_CONFIG", SetConfig: "SET_CONFIG",
	GetInflightFd: "GET_INFLIGHT_FD", SetInflightFd: "SET_INFLIGHT_FD", ResetDevice: "RESET_DEVICE",
	GetMaxMemSlots: "GET_MAX_MEM_SLOTS", AddMemReg: "ADD_MEM_REG", RemMemReg: "REM_MEM_REG",
	SetStatus: "SET_STATUS", GetStatus: "GET_STATUS", SetDeviceStateFd: "SET_DEVICE_STATE_FD",
	CheckDeviceState: "CHECK_DEVICE_STATE", GetShmemConfig: "GET_SHMEM_CONFIG",
}

func (r Request) String() string {
	if s, ok := requestNames[r]; ok {
		return s
	}
	return fmt.Sprintf("request %d", uint32(r))
}

// Header flags.
const (
	FlagVersion   = 0x1
	FlagReply     = 0x4
	FlagNeedReply = 0x8
	versionMask   = 0x3
)

// Virtio feature bits used on the control channel.
const (
	FeatureIndirectDesc     = 1 << 28
	FeatureEventIdx         = 1 << 29
	FeatureProtocolFeatures = 1 << 30
	FeatureVersion1         = 1 << 32
)

// Protocol feature bits.
const (
	ProtocolMQ                = 1 << 0
	ProtocolLogShmfd          = 1 << 1
	ProtocolReplyAck          = 1 << 3
	ProtocolBackendReq        = 1 << 5
	ProtocolConfig            = 1 << 9
	ProtocolBackendSendFd     = 1 << 10
	ProtocolResetDevice       = 1 << 13
	ProtocolConfigureMemSlots = 1 << 15
	ProtocolStatus            = 1 << 16
	ProtocolDeviceState       = 1 << 19
	ProtocolShmem             = 1 << 22
)

const (
	// HeaderSize is the size of the message header.
	HeaderSize = 12
	// MaxPayload bounds a message body; nothing legitimate comes close.
	MaxPayload = 64 << 10
	// MaxFds is how many descriptors one message may carry.
	MaxFds = 32
)

// Message is one decoded vhost-user message.
type Message struct {
	Request Request
	Flags   uint32
	Payload []byte
	Fds     []int
}

// NeedsReply reports whether the sender asked for an acknowledgement.
func (m *Message) NeedsReply() bool { return m.Flags&FlagNeedReply != 0 }

// CloseFds closes every descriptor the message still carries.
func (m *Message) CloseFds() {
	for _, fd := range m.Fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	m.Fds = m.Fds[:0]
}

// TakeFd removes and returns the message's only descriptor; it fails unless
// exactly one was sent.
func (m *Message) TakeFd() (int, error) {
	if len(m.Fds) != 1 {
		return -1, fmt.Errorf("%v carries %d file descriptors, want 1", m.Request, len(m.Fds))
	}
	fd := m.Fds[0]
	m.Fds = m.Fds[:0]
	return fd, nil
}

// ErrClosed means the peer closed the connection.
var ErrClosed = errors.New("vhost-user peer closed the connection")

// Conn is one end of a vhost-user socket, used by both the back-end and the
// test front-end.
type Conn struct {
	uc  *net.UnixConn
	hdr [HeaderSize]byte
	oob []byte
	buf []byte
}

// NewConn wraps a connected unix stream socket.
func NewConn(uc *net.UnixConn) *Conn {
	return &Conn{uc: uc, oob: make([]byte, unix.CmsgSpace(MaxFds*4)), buf: make([]byte, MaxPayload)}
}

// Close closes the socket.
func (c *Conn) Close() error { return c.uc.Close() }

// File returns a duplicate of the socket's descriptor.
func (c *Conn) File() (*os.File, error) { return c.uc.File() }

// Read reads one message. The payload aliases an internal buffer that the
// next Read overwrites. The caller owns the returned descriptors.
func (c *Conn) Read() (*Message, error) {
	n, oobn, _, _, err := c.uc.ReadMsgUnix(c.hdr[:], c.oob)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) {
			return nil, ErrClosed
		}
		return nil, err
	}
	if n == 0 {
		return nil, ErrClosed
	}
	m := &Message{}
	if oobn > 0 {
		if m.Fds, err = parseRights(c.oob[:oobn]); err != nil {
			return nil, err
		}
	}
	if n < HeaderSize {
		if _, err := io.ReadFull(c.uc, c.hdr[n:]); err != nil {
			m.CloseFds()
			return nil, ErrClosed
		}
	}
	m.Request = Request(binary.LittleEndian.Uint32(c.hdr[0:]))
	m.Flags = binary.LittleEndian.Uint32(c.hdr[4:])
	size := binary.LittleEndian.Uint32(c.hdr[8:])
	if m.Flags&versionMask != FlagVersion {
		m.CloseFds()
		return nil, fmt.Errorf("%v: unsupported protocol version in flags %#x", m.Request, m.Flags)
	}
	if size > MaxPayload {
		m.CloseFds()
		return nil, fmt.Errorf("%v: payload of %d bytes exceeds %d", m.Request, size, MaxPayload)
	}
	m.Payload = c.buf[:size]
	if _, err := io.ReadFull(c.uc, m.Payload); err != nil {
		m.CloseFds()
		return nil, ErrClosed
	}
	return m, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		r, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		fds = append(fds, r...)
	}
	return fds, nil
}

// Write sends one message with optional descriptors.
func (c *Conn) Write(req Request, flags uint32, payload []byte, fds ...int) error {
	msg := make([]byte, HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(msg[0:], uint32(req))
	binary.LittleEndian.PutUint32(msg[4:], flags)
	binary.LittleEndian.PutUint32(msg[8:], uint32(len(payload)))
	copy(msg[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.uc.WriteMsgUnix(msg, oob, nil)
	if err == nil && n != len(msg) {
		err = io.ErrShortWrite
	}
	return err
}

// Reply answers req with payload, with exactly the flags QEMU accepts.
func (c *Conn) Reply(req Request, payload []byte) error {
	return c.Write(req, FlagVersion|FlagReply, payload)
}

// ReplyU64 answers req with a u64 body (U64).
func (c *Conn) ReplyU64(req Request, v uint64) error {
	var b [U64Size]byte
	U64{v}.Put(b[:])
	return c.Reply(req, b[:])
}
