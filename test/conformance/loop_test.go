package frontend_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
)

// TestLoop drives a request queue as an event loop (fuseclient.Loop over
// frontend.Owner, what vhostfs-bench uses): many requests in flight from
// one goroutine, replies checked, no allocation per request, and the
// queue handed back to the typed calls afterwards.
func TestLoop(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			fe, share := start(t, dc.get(t), frontend.Options{})
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			content := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
			must(t, "writing the file", os.WriteFile(filepath.Join(share, "f"), content, 0o644))
			e, err := c.Lookup(fuseclient.RootID, "f")
			must(t, "LOOKUP", err)
			o, err := c.Open(e.NodeId, syscall.O_RDWR)
			must(t, "OPEN", err)

			l, err := c.NewLoop(1)
			must(t, "NewLoop", err)
			if _, err := c.NewLoop(1); err == nil {
				t.Fatal("a second owner took the queue")
			}
			const n = 32
			reqs := make([]*fuseclient.Req, n)
			for i := range reqs {
				reqs[i], err = l.NewReq()
				must(t, "NewReq", err)
				reqs[i].Tag = i
			}
			encode := func(r *fuseclient.Req) {
				if r.Tag%2 == 0 {
					r.GetAttr(e.NodeId)
					return
				}
				must(t, "encoding READ", r.Read(e.NodeId, o.Fh, uint64(r.Tag)*1024, 4096))
			}
			check := func(r *fuseclient.Req) {
				if r.Err != nil {
					t.Fatalf("request %d: %v", r.Tag, r.Err)
				}
				if r.Tag%2 == 0 {
					if a := r.Attr(); a.Size != uint64(len(content)) {
						t.Fatalf("GETATTR size %d, want %d", a.Size, len(content))
					}
					return
				}
				off := r.Tag * 1024
				if !bytes.Equal(r.Data(), content[off:off+4096]) {
					t.Fatalf("READ at %d returned other bytes", off)
				}
			}
			// turn submits every request, flushes once and waits for all.
			var batch []*fuseclient.Req
			turn := func() {
				for _, r := range reqs {
					encode(r)
					if err := l.Submit(r); err != nil {
						t.Fatal(err)
					}
				}
				must(t, "Flush", l.Flush())
				for l.InFlight() > 0 {
					batch, err = l.Reap(batch[:0])
					must(t, "Reap", err)
					if len(batch) == 0 {
						must(t, "Wait", l.Wait())
					}
					for _, r := range batch {
						check(r)
					}
				}
			}
			turn()
			batch = make([]*fuseclient.Req, 0, n)
			if allocs := testing.AllocsPerRun(50, turn); allocs != 0 {
				t.Errorf("a loop turn of %d requests allocates %.1f times", n, allocs)
			}
			// An error reply comes back on its request.
			must(t, "encoding LOOKUP", reqs[0].Lookup(fuseclient.RootID, "missing"))
			must(t, "Submit", l.Submit(reqs[0]))
			must(t, "Wait", l.Wait())
			for len(batch) == 0 || l.InFlight() > 0 {
				batch, err = l.Reap(batch[:0])
				must(t, "Reap", err)
				if len(batch) == 0 {
					must(t, "Wait", l.Wait())
				}
			}
			var errno syscall.Errno
			if !errors.As(batch[0].Err, &errno) || errno != syscall.ENOENT {
				t.Errorf("LOOKUP of a missing name: %v, want ENOENT", batch[0].Err)
			}
			must(t, "closing the loop", l.Close())

			// The typed calls have the queue again.
			_, err = c.OnQueue(1).GetAttr(e.NodeId)
			must(t, "GETATTR after the loop", err)
			must(t, "RELEASE", c.Release(e.NodeId, o.Fh, syscall.O_RDWR))
			if s := fe.Queue(1).Strays(); len(s) > 0 {
				t.Errorf("stray used entries: %v", s)
			}
		})
	}
}
