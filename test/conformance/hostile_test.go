package frontend_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// fuseRequest encodes a FUSE request: a 40-byte header then args. length
// overrides the header's length field when non-zero.
func fuseRequest(opcode uint32, nodeid, unique uint64, args []byte, length uint32) []byte {
	b := make([]byte, 40+len(args))
	if length == 0 {
		length = uint32(len(b))
	}
	binary.LittleEndian.PutUint32(b[0:], length)
	binary.LittleEndian.PutUint32(b[4:], opcode)
	binary.LittleEndian.PutUint64(b[8:], unique)
	binary.LittleEndian.PutUint64(b[16:], nodeid)
	copy(b[40:], args)
	return b
}

// guestBytes allocates guest memory holding b and returns its address.
func guestBytes(t *testing.T, fe *frontend.Frontend, b []byte, size int) uint64 {
	t.Helper()
	gpa, err := fe.Mem.Alloc(uint64(max(size, len(b))))
	must(t, "alloc", err)
	mem, err := fe.Mem.Bytes(gpa, uint64(max(size, len(b))))
	must(t, "bytes", err)
	clear(mem)
	copy(mem, b)
	return gpa
}

// hostileCase is one malformed chain. descs builds it from the request
// and reply buffers and the queue; head, when set, publishes that head
// without any descriptor instead.
type hostileCase struct {
	name  string
	descs func(d *virtqueue.Driver, in, out uint64, inLen uint32) []virtqueue.Desc
	head  func(d *virtqueue.Driver) uint16
	// refPanics marks cases that made the reference virtiofsd (1.13.2)
	// panic; they run against ours only.
	refPanics string
}

// refPanic is how the reference virtiofsd (seen with 1.13.2) fails on most malformed
// chains: its vring worker unwraps the error of processing the queue and
// panics (src/vhost_user.rs:271/277, ProcessQueue(DecodeMessage(
// UnexpectedEof)) or ProcessQueue(EncodeMessage(WriteZero))), the back-end
// thread then panics on the poisoned lock, and the device is dead: a
// hostile guest kills the reference daemon.
const refPanic = "vring worker panics on the ProcessQueue error"

const (
	dW = virtqueue.DescWrite
	dN = virtqueue.DescNext
)

var hostileCases = []hostileCase{
	{name: "well formed", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: in, Len: n, Flags: dN, Next: s[1]}, {Addr: out, Len: 4096, Flags: dW}}
	}},
	{name: "header split over three descriptors", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(4)
		return []virtqueue.Desc{{Addr: in, Len: 7, Flags: dN, Next: s[1]}, {Addr: in + 7, Len: 30, Flags: dN, Next: s[2]},
			{Addr: in + 37, Len: n - 37, Flags: dN, Next: s[3]}, {Addr: out, Len: 4096, Flags: dW}}
	}},
	{name: "writable part shorter than the reply header", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: in, Len: n, Flags: dN, Next: s[1]}, {Addr: out, Len: 8, Flags: dW}}
	}, refPanics: refPanic},
	{name: "writable part shorter than the reply", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: in, Len: n, Flags: dN, Next: s[1]}, {Addr: out, Len: 40, Flags: dW}}
	}, refPanics: refPanic},
	{name: "no writable part", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		return []virtqueue.Desc{{Addr: in, Len: n}}
	}, refPanics: refPanic},
	{name: "readable part shorter than the header", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: in, Len: 10, Flags: dN, Next: s[1]}, {Addr: out, Len: 4096, Flags: dW}}
	}, refPanics: refPanic},
	{name: "descriptor loop", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: in, Len: 20, Flags: dN, Next: s[1]}, {Addr: in + 20, Len: 20, Flags: dN, Next: s[0]}}
	}, refPanics: refPanic},
	{name: "next out of range", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		return []virtqueue.Desc{{Addr: in, Len: n, Flags: dN, Next: d.Size() + 3}}
	}, refPanics: refPanic},
	{name: "buffer outside guest memory", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: in, Len: n, Flags: dN, Next: s[1]}, {Addr: 1 << 40, Len: 4096, Flags: dW}}
	}, refPanics: refPanic},
	{name: "readable after writable", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		s := d.SlotIndices(2)
		return []virtqueue.Desc{{Addr: out, Len: 4096, Flags: dW | dN, Next: s[1]}, {Addr: in, Len: n}}
	}},
	{name: "indirect table with a bad length", descs: func(d *virtqueue.Driver, in, out uint64, n uint32) []virtqueue.Desc {
		return []virtqueue.Desc{{Addr: out, Len: 17, Flags: virtqueue.DescIndirect}}
	}, refPanics: refPanic},
	{name: "head out of range", head: func(d *virtqueue.Driver) uint16 { return d.Size() + 5 }, refPanics: refPanic},
}

// TestHostileChains sends malformed chains, each to a fresh daemon. The
// daemon must complete the chain (a guest waits for every request), never
// report a used length beyond the chain's writable bytes (the front-end
// checks), never return a head it was not given, keep serving, and exit 0
// on disconnect.
func TestHostileChains(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			d := dc.get(t)
			for _, tc := range hostileCases {
				t.Run(tc.name, func(t *testing.T) {
					if dc.name == "reference" && tc.refPanics != "" {
						t.Logf("not run: the reference panics (%s)", tc.refPanics)
						return
					}
					fe, _ := start(t, d, frontend.Options{Timeout: 10 * time.Second})
					c := fuseclient.New(fe, fuseclient.Options{})
					defer c.Close()
					mustInit(t, c)
					q := fe.Queue(1)
					getattr := fuseRequest(fuseclient.OpGetattr, fuseclient.RootID, 1001, make([]byte, 16), 0)
					in := guestBytes(t, fe, getattr, 4096)
					out := guestBytes(t, fe, nil, 4096)
					r := fe.NewRequest()
					var err error
					q.WithDriver(func(d *virtqueue.Driver) {
						var head uint16
						if tc.head != nil {
							head = tc.head(d)
							d.PublishHead(head)
							return
						}
						if head, err = d.AddRaw(tc.descs(d, in, out, uint32(len(getattr)))); err == nil {
							err = q.Track(r, head)
						}
					})
					must(t, "publish", err)
					q.Kick()
					if tc.head == nil {
						if err := q.WaitTimeout(r, 2*time.Second); err != nil {
							t.Errorf("chain not completed: %v", err)
						} else {
							status := int32(0)
							if r.UsedLen >= 16 {
								b, _ := fe.Mem.Bytes(out, 16)
								status = int32(binary.LittleEndian.Uint32(b[4:]))
							}
							t.Logf("used %d, status %d", r.UsedLen, status)
						}
					}
					if _, err := c.GetAttr(fuseclient.RootID); err != nil {
						t.Fatalf("GETATTR afterwards: %v", err)
					}
					for _, qi := range []int{0, 1} {
						if s := fe.Queue(qi).Strays(); len(s) > 0 {
							t.Errorf("queue %d: used entries with heads never made available: %+v", qi, s)
						}
					}
				})
			}
		})
	}
}
