package frontend_test

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	opSetupMapping  = 48
	opRemoveMapping = 49
	daxWindow       = 64 << 20
	daxFile         = 32 << 20
)

// daxStart starts our daemon on share with a DAX window over the given
// transport and a front-end that serves the window for real (for shmem,
// refusing what QEMU 11.1 refuses), and INITs a client offering flags (the
// Linux defaults when 0).
func daxStart(t *testing.T, transport, share string, flags uint64) (*fuseclient.Client, *frontend.Frontend) {
	t.Helper()
	opts := frontend.Options{WindowSize: daxWindow}
	if transport == "shmem" {
		opts.ProtocolFeatures = frontend.DefaultProtocolFeatures | vhostuser.ProtocolShmem
	}
	fe, err := frontend.Start(ours(t), daemon.Options{SharedDir: share,
		Extra: []string{"--dax-window-size", "64M", "--dax-transport", transport}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fe.Close(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	c := fuseclient.New(fe, fuseclient.Options{InitFlags: flags})
	t.Cleanup(c.Close)
	if flags == 0 {
		mustInit(t, c)
		return c, fe
	}
	out, err := c.Init()
	must(t, "INIT", err)
	if extra := out.Flags64() &^ flags &^ fuse.CAP_INIT_EXT; extra != 0 {
		t.Errorf("server accepted flags %#x that were not offered", extra)
	}
	return c, fe
}

// daxSession starts a DAX session on a share holding one 32 MiB file, f,
// and returns its node and a read-only handle.
func daxSession(t *testing.T, transport string) (*fuseclient.Client, *frontend.Window, []byte, uint64, uint64) {
	t.Helper()
	share := t.TempDir()
	data := make([]byte, daxFile)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(share, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, fe := daxStart(t, transport, share, 0)
	e, err := c.Lookup(fuseclient.RootID, "f")
	must(t, "LOOKUP", err)
	o, err := c.Open(e.NodeId, syscall.O_RDONLY)
	must(t, "OPEN", err)
	return c, fe.Window(), data, e.NodeId, o.Fh
}

func setupMapping(c *fuseclient.Client, node, foff, length, flags, moff uint64) error {
	a := make([]byte, 40)
	binary.LittleEndian.PutUint64(a[0:], ^uint64(0))
	binary.LittleEndian.PutUint64(a[8:], foff)
	binary.LittleEndian.PutUint64(a[16:], length)
	binary.LittleEndian.PutUint64(a[24:], flags)
	binary.LittleEndian.PutUint64(a[32:], moff)
	_, err := c.Call(opSetupMapping, node, a, 0)
	return err
}

func removeMapping(c *fuseclient.Client, node uint64, ranges ...[2]uint64) error {
	a := make([]byte, 4+16*len(ranges))
	binary.LittleEndian.PutUint32(a, uint32(len(ranges)))
	for i, r := range ranges {
		binary.LittleEndian.PutUint64(a[4+16*i:], r[0])
		binary.LittleEndian.PutUint64(a[12+16*i:], r[1])
	}
	_, err := c.Call(opRemoveMapping, node, a, 0)
	return err
}

// TestDAXWindow maps a file into a real window through each transport and
// checks that the bytes seen through the window equal the file, that an
// unmap empties the range, and that bad requests get an errno.
func TestDAXWindow(t *testing.T) {
	for _, transport := range []string{"legacy", "shmem"} {
		t.Run(transport, func(t *testing.T) {
			c, w, data, node, _ := daxSession(t, transport)
			const chunk = 2 << 20
			for off := uint64(0); off < daxFile; off += chunk {
				must(t, "SETUPMAPPING", setupMapping(c, node, off, chunk, 2, off))
			}
			if got := w.Bytes()[:daxFile]; !bytes.Equal(got, data) {
				t.Fatalf("window differs from the file")
			}
			// Upgrade one range to read-write, then remove half of it.
			must(t, "SETUPMAPPING rw", setupMapping(c, node, 0, chunk, 3, 0))
			must(t, "REMOVEMAPPING", removeMapping(c, node, [2]uint64{0, chunk / 2}))
			buf := make([]byte, 16)
			if _, err := w.ReadAt(buf, 0); err == nil {
				t.Errorf("removed range still mapped")
			}
			if _, err := w.ReadAt(buf, chunk/2); err != nil || !bytes.Equal(buf, data[chunk/2:chunk/2+16]) {
				t.Errorf("the rest of a partly removed range: %v", err)
			}
			for _, bad := range []struct {
				name                      string
				foff, length, flags, moff uint64
			}{
				{"past the window", 0, chunk, 2, daxWindow},
				{"straddling the end", 0, chunk, 2, daxWindow - chunk/2},
				{"unaligned", 1, chunk, 2, 0},
				{"huge length", 0, 1 << 62, 2, 0},
				{"zero length", 0, 0, 2, 0},
			} {
				if err := setupMapping(c, node, bad.foff, bad.length, bad.flags, bad.moff); err == nil {
					t.Errorf("%s: accepted", bad.name)
				}
			}
			if err := setupMapping(c, fuseclient.RootID, 0, chunk, 2, 0); err != syscall.EISDIR {
				t.Errorf("directory node: %v, want EISDIR", err)
			}
			if err := removeMapping(c, node); err == nil {
				t.Errorf("REMOVEMAPPING of 0 ranges accepted")
			}
		})
	}
}

// TestDAXReadFigures measures what the window is for: reading the host's
// page cache in place. It logs mapped-read bandwidth against a plain memory
// copy and 4 KiB random reads through the window against FUSE READ, and
// holds them to the goals (80 % and 3x).
func TestDAXReadFigures(t *testing.T) {
	c, w, _, node, fh := daxSession(t, "legacy")
	const chunk = 2 << 20
	for off := uint64(0); off < daxFile; off += chunk {
		must(t, "SETUPMAPPING", setupMapping(c, node, off, chunk, 2, off))
	}
	win := w.Bytes()[:daxFile]
	plain := bytes.Clone(win)
	dst := make([]byte, daxFile)
	// Alternate the two copies and keep each one's best, so that load
	// from elsewhere on the machine hits both alike.
	tWin, tMem := time.Duration(1<<62), time.Duration(1<<62)
	for range 10 {
		s := time.Now()
		copy(dst, win)
		tWin = min(tWin, time.Since(s))
		s = time.Now()
		copy(dst, plain)
		tMem = min(tMem, time.Since(s))
	}
	ratio := tMem.Seconds() / tWin.Seconds()
	t.Logf("mapped read %.1f GB/s, memcpy %.1f GB/s: %.0f%%", daxFile/tWin.Seconds()/1e9, daxFile/tMem.Seconds()/1e9, 100*ratio)
	if ratio < 0.8 {
		t.Errorf("mapped read reaches %.0f%% of memcpy, goal 80%%", 100*ratio)
	}
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 4096)
	const n = 4000
	offs := make([]uint64, n)
	for i := range offs {
		offs[i] = uint64(r.IntN(daxFile/4096)) * 4096
	}
	s := time.Now()
	for _, off := range offs {
		copy(buf, win[off:off+4096])
	}
	winOps := n / time.Since(s).Seconds()
	s = time.Now()
	for _, off := range offs {
		if _, err := c.Read(node, fh, off, buf); err != nil {
			t.Fatal(err)
		}
	}
	readOps := n / time.Since(s).Seconds()
	t.Logf("4 KiB random reads: window %.0f/s, FUSE READ %.0f/s: %.0fx", winOps, readOps, winOps/readOps)
	if winOps < 3*readOps {
		t.Errorf("window reads only %.1fx FUSE READ, goal 3x", winOps/readOps)
	}
}
