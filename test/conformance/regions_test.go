package frontend_test

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// TestBufferAcrossRegions writes through a data descriptor that starts in
// one memory region and ends in the next (guest addresses contiguous, as
// for adjacent DIMMs): a valid buffer the back-end must gather from both
// mappings. The reference virtiofsd 1.13.2 cannot: its vring worker
// panics (vhost_user.rs:268, QueueReader(VolatileMemoryError(OutOfBounds)))
// and the device dies, so the case runs against ours only.
func TestBufferAcrossRegions(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			if dc.name == "reference" {
				t.Log("not run: the reference panics on a buffer across regions")
				return
			}
			fe, share := start(t, dc.get(t), frontend.Options{Memory: frontend.MemoryLayout{Size: 64 << 20, Regions: 2}})
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			e, o, err := c.Create(fuseclient.RootID, "f", syscall.O_RDWR|syscall.O_CREAT, syscall.S_IFREG|0o644)
			must(t, "CREATE", err)

			boundary := fe.Mem.Regions()[1].GuestAddr
			data, err := fe.Mem.Bytes(boundary-4096, 8192) // crosses
			must(t, "straddling range", err)
			for i := range data {
				data[i] = byte(i*7 + 3)
			}
			want := append([]byte(nil), data...)
			// WRITE header and arguments, then the straddling data.
			args := make([]byte, 40)
			le := func(off int, v uint64, n int) {
				for i := 0; i < n; i++ {
					args[off+i] = byte(v >> (8 * i))
				}
			}
			le(0, o.Fh, 8)
			le(8, 0, 8)     // offset
			le(16, 8192, 4) // size
			in := fuseRequest(fuseclient.OpWrite, e.NodeId, 77, args, 40+40+8192)
			inGPA := guestBytes(t, fe, in, 4096)
			out := guestBytes(t, fe, nil, 4096)
			q := fe.Queue(1)
			r := fe.NewRequest()
			r.Bufs = []virtqueue.Buffer{{Addr: inGPA, Len: uint32(len(in))}, {Addr: boundary - 4096, Len: 8192}, {Addr: out, Len: 4096}}
			r.Readable = 2
			if err := q.Submit(r); err != nil {
				t.Fatal(err)
			}
			if err := q.WaitTimeout(r, 5*time.Second); err != nil {
				t.Fatalf("WRITE across regions: %v", err)
			}
			reply, _ := fe.Mem.Bytes(out, 24)
			if status := int32(uint32(reply[4]) | uint32(reply[5])<<8 | uint32(reply[6])<<16 | uint32(reply[7])<<24); status != 0 || r.UsedLen != 24 {
				t.Fatalf("WRITE across regions: used %d, status %d", r.UsedLen, status)
			}
			got, err := os.ReadFile(filepath.Join(share, "f"))
			must(t, "host file", err)
			if !bytes.Equal(got, want) {
				t.Fatalf("host file holds %d bytes, not the 8192 written across the region boundary", len(got))
			}
			must(t, "RELEASE", c.Release(e.NodeId, o.Fh, syscall.O_RDWR))
		})
	}
}

// TestIndirectTableAcrossRegions publishes a GETATTR whose indirect
// descriptor table starts in one memory region and ends in the next
// (contiguous guest addresses): as valid as a data buffer across the
// boundary. Ours only, for the reason TestBufferAcrossRegions gives.
func TestIndirectTableAcrossRegions(t *testing.T) {
	fe, _ := start(t, ours(t), frontend.Options{Memory: frontend.MemoryLayout{Size: 64 << 20, Regions: 2}})
	c := fuseclient.New(fe, fuseclient.Options{})
	defer c.Close()
	mustInit(t, c)
	getattr := fuseRequest(fuseclient.OpGetattr, fuseclient.RootID, 5, make([]byte, 16), 0)
	in := guestBytes(t, fe, getattr, 4096)
	out := guestBytes(t, fe, nil, 4096)
	boundary := fe.Mem.Regions()[1].GuestAddr
	table, err := fe.Mem.Bytes(boundary-16, 32) // descriptor 0 below, 1 above
	must(t, "table", err)
	putDesc := func(b []byte, d virtqueue.Desc) {
		for i := 0; i < 8; i++ {
			b[i] = byte(d.Addr >> (8 * i))
		}
		for i := 0; i < 4; i++ {
			b[8+i] = byte(d.Len >> (8 * i))
		}
		b[12], b[13], b[14], b[15] = byte(d.Flags), byte(d.Flags>>8), byte(d.Next), byte(d.Next>>8)
	}
	putDesc(table[0:], virtqueue.Desc{Addr: in, Len: uint32(len(getattr)), Flags: virtqueue.DescNext, Next: 1})
	putDesc(table[16:], virtqueue.Desc{Addr: out, Len: 4096, Flags: virtqueue.DescWrite})
	q := fe.Queue(1)
	r := fe.NewRequest()
	q.WithDriver(func(d *virtqueue.Driver) {
		var head uint16
		if head, err = d.AddRaw([]virtqueue.Desc{{Addr: boundary - 16, Len: 32, Flags: virtqueue.DescIndirect}}); err == nil {
			err = q.Track(r, head)
		}
	})
	must(t, "publish", err)
	q.Kick()
	if err := q.WaitTimeout(r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if r.UsedLen != 120 {
		t.Fatalf("GETATTR through an indirect table across regions: used length %d, want 120", r.UsedLen)
	}
}
