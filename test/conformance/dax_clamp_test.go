package frontend_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	kib      = 1 << 10
	mib      = 1 << 20
	daxRange = 2 * mib // what Linux maps at a time
)

// fill returns n bytes of a pattern that differs with seed and offset.
func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/4096) ^ byte(i) ^ seed
	}
	return b
}

// argsOf returns the bytes of a request struct after its InHeader.
func argsOf[T any](v *T) []byte {
	b := unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
	return bytes.Clone(b[unsafe.Sizeof(fuse.InHeader{}):])
}

// readable reports whether the window maps [off, off+n), and returns the
// bytes.
func readable(w *frontend.Window, off, n uint64) ([]byte, bool) {
	b := make([]byte, n)
	_, err := w.ReadAt(b, int64(off))
	return b, err == nil
}

// noBackendFailures checks that the daemon never asked the VMM for a
// mapping it refuses (for shmem: one past the end of a file).
func noBackendFailures(t *testing.T, fe *frontend.Frontend) {
	t.Helper()
	if n, err := fe.Backend().Failures(); n != 0 {
		t.Errorf("the front-end refused %d back-end requests; last: %v", n, err)
	}
}

// TestDAXClamp maps every 2 MiB range of files of various sizes, as Linux
// does, through each transport. SHMEM (QEMU 11.1 semantics) gets only what
// the file covers: a range holding a partial last page, or an empty file,
// is refused with EIO, never mapped short; legacy maps every range.
func TestDAXClamp(t *testing.T) {
	files := []struct {
		name string
		size int
	}{
		{"whole", 4 * mib},
		{"pages", 3*mib + 8*kib},
		{"odd", 3*mib + 100},
		{"tiny", 100},
		{"empty", 0},
	}
	for _, transport := range []string{"shmem", "legacy"} {
		t.Run(transport, func(t *testing.T) {
			share := t.TempDir()
			for i, f := range files {
				if err := os.WriteFile(filepath.Join(share, f.name), fill(f.size, byte(i)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			c, fe := daxStart(t, transport, share, 0)
			w := fe.Window()
			moff := uint64(0)
			for i, f := range files {
				data := fill(f.size, byte(i))
				e, err := c.Lookup(fuseclient.RootID, f.name)
				must(t, "LOOKUP", err)
				for foff := 0; foff < max(f.size, 1); foff += daxRange {
					err := setupMapping(c, e.NodeId, uint64(foff), daxRange, 2, moff)
					rest := f.size - foff
					partial := rest < daxRange && rest%4096 != 0
					what := fmt.Sprintf("%s [%#x, +2 MiB)", f.name, foff)
					switch {
					case transport == "shmem" && (partial || rest <= 0):
						if err != syscall.EIO {
							t.Errorf("%s: %v, want EIO", what, err)
						}
						if _, ok := readable(w, moff, 4096); ok {
							t.Errorf("%s: refused, yet the window is mapped", what)
						}
					case err != nil:
						t.Errorf("%s: %v", what, err)
					default:
						n := min(rest, daxRange)
						if got, ok := readable(w, moff, uint64(n)); !ok || !bytes.Equal(got, data[foff:foff+n]) {
							t.Errorf("%s: window differs from the file (mapped %v)", what, ok)
						}
						if transport == "shmem" && n < daxRange {
							// Clamped: the rest is not mapped at all.
							if _, ok := readable(w, moff+uint64(n), 1); ok {
								t.Errorf("%s: mapped past the end of the file", what)
							}
						}
					}
					moff += daxRange
				}
			}
			noBackendFailures(t, fe)
			// The guest's removes name whole ranges, clamped or not.
			must(t, "REMOVEMAPPING", removeMapping(c, 0, [2]uint64{0, moff}))
			if m := w.Mappings(); len(m) != 0 {
				t.Errorf("left mapped: %+v", m)
			}
			noBackendFailures(t, fe)
		})
	}
}

// TestDAXGrowth grows a file under a clamped mapping in every way the
// guest or the host can, and checks after each that the window shows the
// new part before the reply reaches the guest; growth into a partial page
// the guest's range holds is refused with EIO and changes nothing.
func TestDAXGrowth(t *testing.T) {
	share := t.TempDir()
	path := filepath.Join(share, "g")
	data := fill(mib, 1)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	src := fill(64*kib, 9)
	if err := os.WriteFile(filepath.Join(share, "src"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	c, fe := daxStart(t, "shmem", share, 0)
	w := fe.Window()
	e, err := c.Lookup(fuseclient.RootID, "g")
	must(t, "LOOKUP", err)
	node := e.NodeId
	o, err := c.Open(node, syscall.O_RDWR)
	must(t, "OPEN", err)
	se, err := c.Lookup(fuseclient.RootID, "src")
	must(t, "LOOKUP src", err)
	so, err := c.Open(se.NodeId, syscall.O_RDONLY)
	must(t, "OPEN src", err)
	const moff = 4 * mib
	must(t, "SETUPMAPPING", setupMapping(c, node, 0, daxRange, 2, moff))

	// shows checks that the window now holds the file up to size, and
	// nothing beyond.
	shows := func(what string, size int) {
		t.Helper()
		host, err := os.ReadFile(path)
		must(t, "reading the host file", err)
		if len(host) != size {
			t.Fatalf("%s: the host file has %d bytes, want %d", what, len(host), size)
		}
		n := min(size, daxRange)
		if got, ok := readable(w, moff, uint64(n)); !ok || !bytes.Equal(got, host[:n]) {
			t.Fatalf("%s: the window does not show the file's %d bytes (mapped %v)", what, n, ok)
		}
		if n < daxRange {
			if _, ok := readable(w, moff+uint64(n), 1); ok {
				t.Fatalf("%s: mapped past the end of the file", what)
			}
		}
	}
	hostAppend := func(n int, seed byte) int {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		must(t, "open", err)
		_, err = f.Write(fill(n, seed))
		must(t, "append", err)
		f.Close()
		st, _ := os.Stat(path)
		return int(st.Size())
	}
	size := mib
	shows("clamped", size)

	// A guest WRITE past the end, in whole pages.
	_, err = c.Write(node, o.Fh, uint64(size), fill(64*kib, 2))
	must(t, "WRITE", err)
	size += 64 * kib
	shows("after an extending WRITE", size)
	// One that would end in a partial page inside the range: refused.
	if _, err := c.Write(node, o.Fh, uint64(size), fill(100, 3)); err != syscall.EIO {
		t.Errorf("WRITE into a partial page: %v, want EIO", err)
	}
	shows("after the refused WRITE", size)
	// A write inside the mapped part is not growth.
	_, err = c.Write(node, o.Fh, 4096, fill(100, 4))
	must(t, "WRITE inside", err)

	// SETATTR size.
	if _, err := c.SetAttr(node, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE, Size: uint64(size + 100)}}); err != syscall.EIO {
		t.Errorf("truncate up into a partial page: %v, want EIO", err)
	}
	_, err = c.SetAttr(node, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE, Size: uint64(size + 64*kib)}})
	must(t, "truncate up", err)
	size += 64 * kib
	shows("after a truncate up", size)

	// FALLOCATE.
	_, err = c.Call(fuseclient.OpFallocate, node, argsOf(&fuse.FallocateIn{Fh: o.Fh, Offset: uint64(size), Length: 64 * kib}), 0)
	must(t, "FALLOCATE", err)
	size += 64 * kib
	shows("after FALLOCATE", size)

	// COPY_FILE_RANGE into the file.
	_, err = c.Call(47, se.NodeId, argsOf(&fuse.CopyFileRangeIn{FhIn: so.Fh, NodeIdOut: node, FhOut: o.Fh, OffOut: uint64(size), Len: 64 * kib}), 8)
	must(t, "COPY_FILE_RANGE", err)
	size += 64 * kib
	shows("after COPY_FILE_RANGE", size)

	// The host grows the file; the guest learns of it from GETATTR,
	// LOOKUP or READDIRPLUS, and the window shows it by then.
	for _, learn := range []struct {
		name string
		do   func() error
	}{
		{"GETATTR", func() error { _, err := c.GetAttr(node); return err }},
		{"LOOKUP", func() error { _, err := c.Lookup(fuseclient.RootID, "g"); return err }},
		{"READDIRPLUS", func() error {
			d, err := c.Opendir(fuseclient.RootID)
			if err != nil {
				return err
			}
			defer c.Releasedir(fuseclient.RootID, d.Fh)
			_, err = c.ReaddirPlus(fuseclient.RootID, d.Fh, 0, 4096)
			return err
		}},
	} {
		size = hostAppend(64*kib, 5)
		if _, ok := readable(w, moff+uint64(size)-1, 1); ok {
			t.Fatalf("%s: the window grew before the guest asked", learn.name)
		}
		must(t, learn.name, learn.do())
		shows("host growth, then "+learn.name, size)
	}

	// The host grows it to a partial page: only the whole pages show.
	size = hostAppend(64*kib+100, 6)
	_, err = c.GetAttr(node)
	must(t, "GETATTR", err)
	if _, ok := readable(w, moff+uint64(size)&^4095-1, 1); !ok {
		t.Errorf("the whole pages of a host growth to a partial page are not mapped")
	}
	if _, ok := readable(w, moff+uint64(size)&^4095, 1); ok {
		t.Errorf("the partial last page is mapped")
	}

	// Past the range: the whole range is mapped, in pieces.
	size = hostAppend(daxRange, 7)
	_, err = c.GetAttr(node)
	must(t, "GETATTR", err)
	shows("grown past the range", size)
	pieces := 0
	for _, m := range w.Mappings() {
		if m.Offset >= moff && m.Offset < moff+daxRange {
			pieces++
		}
	}
	t.Logf("the range is backed by %d VMM mappings", pieces)
	if pieces < 2 {
		t.Errorf("growth remapped what was mapped: %d mapping(s)", pieces)
	}
	// The upgrade to read-write maps it as one.
	must(t, "SETUPMAPPING rw", setupMapping(c, node, 0, daxRange, 3, moff))
	shows("after the upgrade", size)
	if m := w.Mappings(); len(m) != 1 || m[0].Len != daxRange || m[0].Prot != syscall.PROT_READ|syscall.PROT_WRITE {
		t.Errorf("after the upgrade: %+v", m)
	}
	must(t, "REMOVEMAPPING", removeMapping(c, node, [2]uint64{moff, daxRange}))
	if m := w.Mappings(); len(m) != 0 {
		t.Errorf("left mapped: %+v", m)
	}
	noBackendFailures(t, fe)
}

// TestDAXHostile sends SETUPMAPPING and REMOVEMAPPING that a guest should
// not, through each transport: each gets an errno (or, where the daemon
// may serve it, a correct mapping), nothing reaches the VMM that it would
// refuse, and the daemon goes on serving.
func TestDAXHostile(t *testing.T) {
	for _, transport := range []string{"shmem", "legacy"} {
		t.Run(transport, func(t *testing.T) {
			share := t.TempDir()
			data := fill(4*mib, 3)
			for _, n := range []string{"f", "wronly", "doomed", "unlinked"} {
				if err := os.WriteFile(filepath.Join(share, n), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			must(t, "chmod", os.Chmod(filepath.Join(share, "wronly"), 0o200))
			must(t, "mkfifo", syscall.Mkfifo(filepath.Join(share, "fifo"), 0o644))
			must(t, "symlink", os.Symlink("f", filepath.Join(share, "link")))
			c, fe := daxStart(t, transport, share, 0)
			w := fe.Window()
			node := func(n string) uint64 {
				t.Helper()
				e, err := c.Lookup(fuseclient.RootID, n)
				must(t, "LOOKUP "+n, err)
				return e.NodeId
			}
			f := node("f")
			maps := fe.Backend().Count(mapRequest(transport))
			for _, bad := range []struct {
				name                            string
				node, foff, length, flags, moff uint64
				want                            syscall.Errno
			}{
				{"past the window", f, 0, daxRange, 2, daxWindow, syscall.EINVAL},
				{"straddling the end", f, 0, daxRange, 2, daxWindow - mib, syscall.EINVAL},
				{"unaligned window offset", f, 0, daxRange, 2, 4096 + 1, syscall.EINVAL},
				{"unaligned file offset", f, 100, daxRange, 2, 0, syscall.EINVAL},
				{"unaligned length", f, 0, 4097, 2, 0, syscall.EINVAL},
				{"zero length", f, 0, 0, 2, 0, syscall.EINVAL},
				{"huge length", f, 0, 1 << 62, 2, 0, syscall.EINVAL},
				{"length wrapping the window", f, 0, ^uint64(0) &^ 4095, 2, 4096, syscall.EINVAL},
				{"file offset wrapping", f, ^uint64(0) &^ 4095, daxRange, 2, 0, syscall.EINVAL},
				{"directory", fuseclient.RootID, 0, daxRange, 2, 0, syscall.EISDIR},
				{"fifo", node("fifo"), 0, daxRange, 2, 0, syscall.EACCES},
				{"symlink", node("link"), 0, daxRange, 2, 0, syscall.EACCES},
				{"unknown node", 1 << 40, 0, daxRange, 2, 0, syscall.EBADF},
			} {
				if err := setupMapping(c, bad.node, bad.foff, bad.length, bad.flags, bad.moff); err != bad.want {
					t.Errorf("%s: %v, want %v", bad.name, err, bad.want)
				}
			}
			if got := fe.Backend().Count(mapRequest(transport)); got != maps {
				t.Errorf("bad requests reached the VMM: %d map requests", got-maps)
			}
			if _, ok := readable(w, 0, 1); ok {
				t.Errorf("the window got mapped")
			}
			// REMOVEMAPPING: bad counts and ranges; ranges never mapped
			// are fine.
			if err := removeMapping(c, f); err != syscall.EINVAL {
				t.Errorf("REMOVEMAPPING of no range: %v", err)
			}
			if _, err := c.Call(opRemoveMapping, f, []byte{2, 0, 0, 0, 0, 0, 0, 0}, 0); err != syscall.EINVAL {
				t.Errorf("REMOVEMAPPING counting more ranges than it has: %v", err)
			}
			if err := removeMapping(c, f, [2]uint64{daxWindow, 4096}); err != syscall.EINVAL {
				t.Errorf("REMOVEMAPPING past the window: %v", err)
			}
			if err := removeMapping(c, f, [2]uint64{4096, ^uint64(0)}); err != syscall.EINVAL {
				t.Errorf("REMOVEMAPPING with a huge length: %v", err)
			}
			must(t, "REMOVEMAPPING of an unmapped range", removeMapping(c, f, [2]uint64{0, daxRange}))

			// A write-only file (mode 0200), opened write-only by the
			// guest: the daemon opens its own descriptor; as root it can
			// read it, otherwise the mapping gets an errno.
			wr := node("wronly")
			o, err := c.Open(wr, syscall.O_WRONLY)
			must(t, "OPEN O_WRONLY", err)
			for _, flags := range []uint64{2, 3} {
				err := setupMapping(c, wr, 0, daxRange, flags, 0)
				if os.Geteuid() != 0 {
					if err != syscall.EACCES {
						t.Errorf("write-only file, flags %d: %v, want EACCES", flags, err)
					}
					continue
				}
				if got, ok := readable(w, 0, daxRange); err != nil || !ok || !bytes.Equal(got, data[:daxRange]) {
					t.Errorf("write-only file, flags %d: %v, window right %v", flags, err, ok && bytes.Equal(got, data[:daxRange]))
				}
			}
			c.Release(wr, o.Fh, 0)

			// Files deleted while mapped: by the host and by the guest.
			doomed, unlinked := node("doomed"), node("unlinked")
			must(t, "SETUPMAPPING doomed", setupMapping(c, doomed, 0, daxRange, 2, 2*daxRange))
			must(t, "SETUPMAPPING unlinked", setupMapping(c, unlinked, daxRange, daxRange, 3, 3*daxRange))
			must(t, "host rm", os.Remove(filepath.Join(share, "doomed")))
			must(t, "UNLINK", c.Unlink(fuseclient.RootID, "unlinked"))
			for _, r := range []struct {
				what       string
				moff, foff uint64
			}{{"host-deleted", 2 * daxRange, 0}, {"guest-unlinked", 3 * daxRange, daxRange}} {
				if got, ok := readable(w, r.moff, daxRange); !ok || !bytes.Equal(got, data[r.foff:r.foff+daxRange]) {
					t.Errorf("%s file: the window lost its data (mapped %v)", r.what, ok)
				}
			}
			// Mapping them again still works (the node holds the inode)
			// or fails with an errno; growth checks find nothing to do.
			if err := setupMapping(c, doomed, daxRange, daxRange, 3, 2*daxRange); err != nil {
				t.Logf("remapping a deleted file: %v", err)
			}
			_, err = c.GetAttr(doomed)
			t.Logf("GETATTR of the deleted file: %v", err)
			must(t, "REMOVEMAPPING deleted", removeMapping(c, doomed, [2]uint64{2 * daxRange, 2 * daxRange}))
			must(t, "FORGET", c.Forget(doomed, 1))
			if err := setupMapping(c, doomed, 0, daxRange, 2, 2*daxRange); err == nil {
				t.Errorf("SETUPMAPPING of a forgotten node: accepted")
			}
			// The daemon still serves.
			_, err = c.GetAttr(f)
			must(t, "GETATTR after it all", err)
			must(t, "SETUPMAPPING after it all", setupMapping(c, f, 0, daxRange, 2, 0))
			if got, ok := readable(w, 0, daxRange); !ok || !bytes.Equal(got, data[:daxRange]) {
				t.Errorf("the window after it all: mapped %v", ok)
			}
			noBackendFailures(t, fe)
		})
	}
}

func mapRequest(transport string) vhostuser.Request {
	if transport == "legacy" {
		return frontend.BackendFSMap
	}
	return frontend.BackendShmemMap
}

// TestDAXInodeFlag mounts as dax=inode does (INIT with HAS_INODE_DAX) and
// checks that the file carrying FS_XFLAG_DAX on the host, and the one made
// in a directory that carries it, are marked FUSE_ATTR_DAX, in LOOKUP,
// GETATTR, READDIRPLUS and CREATE replies, and the others not; a guest
// that does not ask for HAS_INODE_DAX sees no flag.
func TestDAXInodeFlag(t *testing.T) {
	share := t.TempDir()
	for _, n := range []string{"on", "off"} {
		must(t, "write", os.WriteFile(filepath.Join(share, n), fill(8192, 1), 0o644))
	}
	must(t, "mkdir", os.Mkdir(filepath.Join(share, "daxdir"), 0o755))
	must(t, "chattr +x", setXflagDAX(filepath.Join(share, "on")))
	must(t, "chattr +x", setXflagDAX(filepath.Join(share, "daxdir")))
	flags := fuseclient.LinuxInitFlags | fuse.CAP_MAP_ALIGNMENT | fuse.CAP_HAS_INODE_DAX
	c, _ := daxStart(t, "shmem", share, flags)
	if c.InitOut().Flags64()&fuse.CAP_HAS_INODE_DAX == 0 {
		t.Fatalf("HAS_INODE_DAX not agreed: %#x", c.InitOut().Flags64())
	}
	dax := func(a fuse.Attr) bool { return a.Flags&fuse.ATTR_DAX != 0 }
	on, err := c.Lookup(fuseclient.RootID, "on")
	must(t, "LOOKUP", err)
	off, err := c.Lookup(fuseclient.RootID, "off")
	must(t, "LOOKUP", err)
	dir, err := c.Lookup(fuseclient.RootID, "daxdir")
	must(t, "LOOKUP", err)
	if !dax(on.Attr) || dax(off.Attr) || dax(dir.Attr) {
		t.Errorf("LOOKUP flags: on %#x, off %#x, directory %#x", on.Attr.Flags, off.Attr.Flags, dir.Attr.Flags)
	}
	a1, err := c.GetAttr(on.NodeId)
	must(t, "GETATTR", err)
	a2, err := c.GetAttr(off.NodeId)
	must(t, "GETATTR", err)
	if !dax(a1.Attr) || dax(a2.Attr) {
		t.Errorf("GETATTR flags: on %#x, off %#x", a1.Attr.Flags, a2.Attr.Flags)
	}
	d, err := c.Opendir(fuseclient.RootID)
	must(t, "OPENDIR", err)
	ents, err := c.ReaddirPlus(fuseclient.RootID, d.Fh, 0, 4096)
	must(t, "READDIRPLUS", err)
	for _, e := range ents {
		if e.Entry.NodeId != 0 && dax(e.Entry.Attr) != (e.Name == "on") {
			t.Errorf("READDIRPLUS %s: flags %#x", e.Name, e.Entry.Attr.Flags)
		}
	}
	ce, _, err := c.Create(dir.NodeId, "new", syscall.O_RDWR, 0o644)
	must(t, "CREATE", err)
	ce2, _, err := c.Create(fuseclient.RootID, "plain", syscall.O_RDWR, 0o644)
	must(t, "CREATE", err)
	if !dax(ce.Attr) || dax(ce2.Attr) {
		t.Errorf("CREATE flags: in the DAX directory %#x, elsewhere %#x", ce.Attr.Flags, ce2.Attr.Flags)
	}

	c2, _ := daxStart(t, "shmem", share, fuseclient.LinuxInitFlags|fuse.CAP_MAP_ALIGNMENT)
	e, err := c2.Lookup(fuseclient.RootID, "on")
	must(t, "LOOKUP", err)
	if dax(e.Attr) {
		t.Errorf("without HAS_INODE_DAX: flags %#x", e.Attr.Flags)
	}
}

// setXflagDAX sets FS_XFLAG_DAX on path, as chattr +x does.
func setXflagDAX(path string) error {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var x [28]byte // struct fsxattr; fsx_xflags first
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), 0x801c581f, uintptr(unsafe.Pointer(&x[0]))); e != 0 {
		return fmt.Errorf("FS_IOC_FSGETXATTR: %w", e)
	}
	x[1] |= 0x80 // FS_XFLAG_DAX, 0x8000
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), 0x401c5820, uintptr(unsafe.Pointer(&x[0]))); e != 0 {
		return fmt.Errorf("FS_IOC_FSSETXATTR (the test directory's filesystem must hold FS_XFLAG_DAX, as ext4 and xfs do): %w", e)
	}
	return nil
}
