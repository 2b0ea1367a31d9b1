package frontend_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
)

// TestRequestPathAllocations checks that the client's request path
// allocates (almost) nothing in steady state, and logs round-trip times:
// the harness will drive benchmarks.
func TestRequestPathAllocations(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			fe, _ := start(t, dc.get(t), frontend.Options{})
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			e, o, err := c.Create(fuseclient.RootID, "f", syscall.O_RDWR|syscall.O_CREAT, syscall.S_IFREG|0o644)
			must(t, "CREATE", err)
			buf := make([]byte, 64<<10)
			ops := []struct {
				name string
				fn   func() error
			}{
				{"GETATTR", func() error { _, err := c.GetAttr(e.NodeId); return err }},
				{"WRITE 64 KiB", func() error { _, err := c.Write(e.NodeId, o.Fh, 0, buf); return err }},
				{"READ 64 KiB", func() error { _, err := c.Read(e.NodeId, o.Fh, 0, buf); return err }},
				{"LOOKUP", func() error { _, err := c.Lookup(fuseclient.RootID, "f"); return err }},
			}
			for _, op := range ops {
				var opErr error
				run := func() {
					if err := op.fn(); err != nil {
						opErr = err
					}
				}
				run() // warm up the pools
				allocs := testing.AllocsPerRun(200, run)
				if opErr != nil {
					t.Fatalf("%s: %v", op.name, opErr)
				}
				const n = 2000
				begin := time.Now()
				for range n {
					run()
				}
				t.Logf("%-13s %.1f allocs/op, %v/op", op.name, allocs, time.Since(begin)/n)
				if allocs > 2 {
					t.Errorf("%s allocates %.1f times per call", op.name, allocs)
				}
			}
			must(t, "RELEASE", c.Release(e.NodeId, o.Fh, syscall.O_RDWR))
		})
	}
}
