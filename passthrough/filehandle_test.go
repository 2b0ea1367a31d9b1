// Tests of inodes held by kernel file handles (filehandle.go), and the
// helpers the handle tests share.

package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// fdCount counts the process's open descriptors.
func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents) - 1 // the directory's own
}

// node returns the inode of a node id, without a use reference.
func node(t testing.TB, fs *FS, id uint64) *inode {
	t.Helper()
	i := fs.inodes.get(id)
	require.NotNil(t, i)
	i.put()
	return i
}

func mkdir(t testing.TB, fs *FS, parent uint64, n string) uint64 {
	t.Helper()
	var eo gofuse.EntryOut
	require.Zero(t, fs.Mkdir(&gofuse.MkdirIn{InHeader: hdr(parent), Mode: 0o755}, name(n), &eo))
	return eo.NodeId
}

func getattr(fs *FS, id uint64) (gofuse.AttrOut, syscall.Errno) {
	var ao gofuse.AttrOut
	e := fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(id)}, &ao)
	return ao, e
}

func TestParseInodeFileHandles(t *testing.T) {
	for s, want := range map[string]InodeFileHandles{"never": FileHandlesNever, "prefer": FileHandlesPrefer,
		"fallback": FileHandlesPrefer, "mandatory": FileHandlesMandatory} {
		got, err := ParseInodeFileHandles(s)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	for _, bad := range []string{"", "always", "Prefer"} {
		_, err := ParseInodeFileHandles(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "prefer", FileHandlesPrefer.String())
	require.Equal(t, "mandatory", FileHandlesMandatory.String())
}

// TestFileHandleInodes checks that with file handles inodes hold no
// descriptor and that the root's mount has one.
func TestFileHandleInodes(t *testing.T) {
	requireRoot(t)
	for _, m := range []InodeFileHandles{FileHandlesPrefer, FileHandlesMandatory} {
		fs, root := newFS(t, Config{InodeFileHandles: m})
		require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644))
		require.NoError(t, os.Mkdir(filepath.Join(root, "d"), 0o755))
		require.NoError(t, os.Symlink("f", filepath.Join(root, "l")))
		require.NoError(t, unix.Mkfifo(filepath.Join(root, "p"), 0o644))
		for _, n := range []string{"f", "d", "l", "p"} {
			eo, e := lookup(t, fs, RootID, n)
			require.Zero(t, e, n)
			i := node(t, fs, eo.NodeId)
			require.Equal(t, -1, i.fd, n)
			require.NotEmpty(t, i.fileHandle, n)
			ao, e := getattr(fs, eo.NodeId)
			require.Zero(t, e, n)
			require.Equal(t, eo.Attr.Ino, ao.Attr.Ino, n)
		}
		require.Equal(t, 1, fs.mounts.count())
		require.Equal(t, RootID, int(node(t, fs, RootID).id))
		require.GreaterOrEqual(t, node(t, fs, RootID).fd, 0, "the root keeps its descriptor")
	}
	// never keeps descriptors.
	fs, root := newFS(t, Config{})
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), nil, 0o644))
	eo, e := lookup(t, fs, RootID, "f")
	require.Zero(t, e)
	require.GreaterOrEqual(t, node(t, fs, eo.NodeId).fd, 0)
	require.Nil(t, fs.fdc)
}

// TestFileHandleOps runs the requests that use an inode's descriptor on
// inodes below a directory, so that parents are handle-backed too.
func TestFileHandleOps(t *testing.T) {
	requireRoot(t)
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{Readdirplus: true, Xattr: true})
		d := mkdir(t, fs, RootID, "d")
		e2 := mkdir(t, fs, d, "e")
		hostF := filepath.Join(root, "d", "f")

		c := create(t, fs, d, "f", unix.O_RDWR)
		w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 5}
		_, e := fs.Write(&w, [][]byte{[]byte("hello")})
		require.Zero(t, e)
		ao, e := getattr(fs, c.NodeId)
		require.Zero(t, e)
		require.EqualValues(t, 5, ao.Size)

		// SETATTR: mode, owner, size (through the handle and not), times.
		sa := func(in gofuse.SetAttrIn) syscall.Errno {
			in.InHeader = hdr(in.NodeId)
			return fs.SetAttr(&in, &ao)
		}
		setattr := func(node uint64, valid uint32, f func(*gofuse.SetAttrIn)) syscall.Errno {
			var in gofuse.SetAttrIn
			in.NodeId, in.Valid = node, valid
			if f != nil {
				f(&in)
			}
			return sa(in)
		}
		require.Zero(t, setattr(c.NodeId, gofuse.FATTR_MODE, func(in *gofuse.SetAttrIn) { in.Mode = 0o600 }))
		require.EqualValues(t, 0o600, statMode(t, hostF))
		require.Zero(t, setattr(c.NodeId, gofuse.FATTR_UID|gofuse.FATTR_GID, func(in *gofuse.SetAttrIn) { in.Uid, in.Gid = 1000, 1000 }))
		require.EqualValues(t, 1000, ao.Uid)
		require.Zero(t, setattr(c.NodeId, gofuse.FATTR_SIZE, func(in *gofuse.SetAttrIn) { in.Size = 2 }))
		require.EqualValues(t, 2, ao.Size)
		require.Zero(t, setattr(c.NodeId, gofuse.FATTR_SIZE|gofuse.FATTR_FH, func(in *gofuse.SetAttrIn) { in.Size, in.Fh = 4, c.Fh }))
		require.EqualValues(t, 4, ao.Size)
		require.Zero(t, setattr(c.NodeId, gofuse.FATTR_MTIME|gofuse.FATTR_ATIME, func(in *gofuse.SetAttrIn) { in.Mtime, in.Atime = 1000, 2000 }))
		var st unix.Stat_t
		require.NoError(t, unix.Stat(hostF, &st))
		require.EqualValues(t, 1000, st.Mtim.Sec)
		require.EqualValues(t, 2000, st.Atim.Sec)

		// ACCESS as the owner and as someone else.
		access := func(uid uint32, mask uint32) syscall.Errno {
			in := gofuse.AccessIn{InHeader: hdr(c.NodeId), Mask: mask}
			in.Uid, in.Gid = uid, uid
			return fs.Access(&in)
		}
		runtime.LockOSThread()
		require.Zero(t, access(1000, unix.R_OK|unix.W_OK))
		require.Equal(t, syscall.EACCES, access(2000, unix.R_OK))
		runtime.UnlockOSThread()

		// SYMLINK, READLINK, times on the symlink itself.
		var lo gofuse.EntryOut
		require.Zero(t, fs.Symlink(&gofuse.InHeader{NodeId: d}, name("l"), name("f"), &lo))
		buf := make([]byte, 64)
		h := hdr(lo.NodeId)
		n, e := fs.Readlink(&h, buf)
		require.Zero(t, e)
		require.Equal(t, "f", string(buf[:n]))
		require.Zero(t, setattr(lo.NodeId, gofuse.FATTR_MTIME, func(in *gofuse.SetAttrIn) { in.Mtime = 3000 }))
		require.NoError(t, unix.Lstat(filepath.Join(root, "d", "l"), &st))
		require.EqualValues(t, 3000, st.Mtim.Sec)
		require.NoError(t, unix.Stat(hostF, &st))
		require.EqualValues(t, 1000, st.Mtim.Sec, "the target's times are untouched")

		// MKNOD, LINK, RENAME.
		var po gofuse.EntryOut
		require.Zero(t, fs.Mknod(&gofuse.MknodIn{InHeader: hdr(e2), Mode: unix.S_IFIFO | 0o644}, name("p"), &po))
		var ko gofuse.EntryOut
		require.Zero(t, fs.Link(&gofuse.LinkIn{InHeader: hdr(e2), Oldnodeid: c.NodeId}, name("f2"), &ko))
		require.Equal(t, c.NodeId, ko.NodeId)
		require.EqualValues(t, 2, ko.Nlink)
		require.Zero(t, fs.Rename(&gofuse.RenameIn{InHeader: hdr(d), Newdir: e2}, name("f"), name("g")))
		eo, e := lookup(t, fs, e2, "g")
		require.Zero(t, e)
		require.Equal(t, c.NodeId, eo.NodeId, "renamed: still the same inode")
		ao, e = getattr(fs, c.NodeId)
		require.Zero(t, e)
		require.EqualValues(t, 4, ao.Size)

		// STATFS, SYNCFS, OPEN, READ, the xattrs, a DAX descriptor.
		var so gofuse.StatfsOut
		h = hdr(e2)
		require.Zero(t, fs.StatFs(&h, &so))
		require.NotZero(t, so.Blocks)
		require.Zero(t, fs.SyncFs(&h))
		var oo gofuse.OpenOut
		require.Zero(t, fs.Open(&gofuse.OpenIn{InHeader: hdr(c.NodeId), Flags: unix.O_RDONLY}, &oo))
		rn, e := fs.Read(&gofuse.ReadIn{InHeader: hdr(c.NodeId), Fh: oo.Fh, Size: 64}, [][]byte{buf})
		require.Zero(t, e)
		require.Equal(t, "he\x00\x00", string(buf[:rn]), "cut to 2, grown to 4")
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: oo.Fh})
		require.Zero(t, setX(fs, c.NodeId, "user.a", "v", 0))
		require.Zero(t, setX(fs, po.NodeId, "trusted.a", "v", 0))
		require.Equal(t, []string{"trusted.a"}, listX(t, fs, po.NodeId))
		mfd, e := fs.MappingFd(c.NodeId, true)
		require.Zero(t, e)
		unix.Close(mfd)

		// READDIRPLUS below the root.
		require.Zero(t, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(e2)}, &oo))
		dbuf := make([]byte, 4096)
		dl := fuse.NewDirList(dbuf, true)
		require.Zero(t, fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(e2), Fh: oo.Fh, Size: 4096}, &dl))
		seen := map[string]uint64{}
		fuse.WalkDirList(dbuf[:dl.Len()], true, func(nm string, _ uint64, eo *gofuse.EntryOut) { seen[nm] = eo.NodeId })
		fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(e2), Fh: oo.Fh})
		require.Equal(t, c.NodeId, seen["g"])
		require.Equal(t, c.NodeId, seen["f2"])
		require.Equal(t, po.NodeId, seen["p"])

		// UNLINK, RMDIR.
		hd, he := hdr(d), hdr(e2)
		require.Zero(t, fs.Unlink(&he, name("g")))
		require.Zero(t, fs.Unlink(&he, name("f2")))
		require.Zero(t, fs.Unlink(&he, name("p")))
		require.Zero(t, fs.Unlink(&hd, name("l")))
		require.Zero(t, fs.Rmdir(&hd, name("e")))
		hr := hdr(RootID)
		require.Zero(t, fs.Rmdir(&hr, name("d")))
		ents, err := os.ReadDir(root)
		require.NoError(t, err)
		require.Empty(t, ents)

		// The guest still has the file open: fstat (GETATTR with its
		// handle) answers whatever became of the file's names.
		ao = gofuse.AttrOut{}
		require.Zero(t, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(c.NodeId), Flags_: gofuse.FUSE_GETATTR_FH, Fh_: c.Fh}, &ao))
		require.EqualValues(t, 0, ao.Nlink)
		require.EqualValues(t, 4, ao.Size)
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
		_, handles := fs.Counts()
		require.Zero(t, handles)
	})
}

// TestFileHandleStale deletes on the host files the guest has looked up but
// not opened: with file handles (and no cached descriptor), requests on
// them fail with ESTALE.
func TestFileHandleStale(t *testing.T) {
	requireRoot(t)
	fs, root := newFS(t, Config{InodeFileHandles: FileHandlesPrefer})
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(root, "d"), 0o755))
	f, e := lookup(t, fs, RootID, "f")
	require.Zero(t, e)
	d, e := lookup(t, fs, RootID, "d")
	require.Zero(t, e)
	_, e = getattr(fs, f.NodeId)
	require.Zero(t, e)
	before := fdCount(t)

	require.NoError(t, os.Remove(filepath.Join(root, "f")))
	require.NoError(t, os.Remove(filepath.Join(root, "d")))
	fs.fdc.flush()
	_, e = getattr(fs, f.NodeId)
	require.Equal(t, syscall.ESTALE, e)
	var oo gofuse.OpenOut
	require.Equal(t, syscall.ESTALE, fs.Open(&gofuse.OpenIn{InHeader: hdr(f.NodeId), Flags: unix.O_RDONLY}, &oo))
	var ao gofuse.AttrOut
	require.Equal(t, syscall.ESTALE, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: hdr(f.NodeId), Valid: gofuse.FATTR_MODE, Mode: 0o600}}, &ao))
	_, e = lookup(t, fs, d.NodeId, "x")
	require.Equal(t, syscall.ESTALE, e)
	require.Equal(t, syscall.ESTALE, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(d.NodeId)}, &oo))
	var eo gofuse.EntryOut
	require.Equal(t, syscall.ESTALE, fs.Mkdir(&gofuse.MkdirIn{InHeader: hdr(d.NodeId), Mode: 0o755}, name("x"), &eo))
	require.LessOrEqual(t, fdCount(t), before)

	// The guest forgets them; a new file reusing the inode number is a
	// new inode, not the stale one.
	fs.Forget(f.NodeId, 1)
	fs.Forget(d.NodeId, 1)
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("yy"), 0o644))
	f2, e := lookup(t, fs, RootID, "f")
	require.Zero(t, e)
	ao2, e := getattr(fs, f2.NodeId)
	require.Zero(t, e)
	require.EqualValues(t, 2, ao2.Size)
	inodes, _ := fs.Counts()
	require.Equal(t, 2, inodes)
}

// TestFileHandleAllocations: the hot paths stay allocation-free with inodes
// held by handles, below a handle-backed directory.
func TestFileHandleAllocations(t *testing.T) {
	requireRoot(t)
	fs, _ := newFS(t, Config{InodeFileHandles: FileHandlesPrefer})
	d := mkdir(t, fs, RootID, "d")
	c := create(t, fs, d, "f", unix.O_RDWR)
	defer fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
	require.Equal(t, -1, node(t, fs, c.NodeId).fd)
	require.Equal(t, -1, node(t, fs, d).fd)
	buf := make([]byte, 4096)
	segs := [][]byte{buf}
	w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 4096}
	r := gofuse.ReadIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 4096}
	g := gofuse.GetAttrIn{InHeader: hdr(c.NodeId)}
	gfh := gofuse.GetAttrIn{InHeader: hdr(c.NodeId), Flags_: gofuse.FUSE_GETATTR_FH, Fh_: c.Fh}
	gd := gofuse.GetAttrIn{InHeader: hdr(d)}
	h := hdr(d)
	nm := name("f")
	var ao gofuse.AttrOut
	var eo gofuse.EntryOut
	for _, tc := range []struct {
		op string
		f  func()
	}{
		{"GETATTR", func() { fs.GetAttr(&g, &ao) }},
		{"GETATTR fh", func() { fs.GetAttr(&gfh, &ao) }},
		{"GETATTR dir", func() { fs.GetAttr(&gd, &ao) }},
		{"LOOKUP", func() { fs.Lookup(&h, nm, &eo); fs.Forget(eo.NodeId, 1) }},
		{"WRITE", func() { fs.Write(&w, segs) }},
		{"READ", func() { fs.Read(&r, segs) }},
	} {
		require.Zero(t, testing.AllocsPerRun(200, tc.f), tc.op)
	}
	// Even with every GETATTR opening the handle afresh.
	fs2, _ := newFS(t, Config{InodeFileHandles: FileHandlesPrefer, HandleCacheSize: -1})
	c2 := create(t, fs2, RootID, "f", unix.O_RDWR)
	defer fs2.Release(&gofuse.ReleaseIn{InHeader: hdr(c2.NodeId), Fh: c2.Fh})
	g2 := gofuse.GetAttrIn{InHeader: hdr(c2.NodeId)}
	require.Zero(t, testing.AllocsPerRun(200, func() { fs2.GetAttr(&g2, &ao) }), "GETATTR uncached")
	// And a lookup that must compare handles (no descriptor pins the
	// inode).
	h2 := hdr(RootID)
	require.Zero(t, testing.AllocsPerRun(200, func() { fs2.Lookup(&h2, nm, &eo); fs2.Forget(eo.NodeId, 1) }), "LOOKUP uncached")
	require.Equal(t, c2.NodeId, eo.NodeId)
}

// TestFileHandlesWithoutCapability creates filesystems on a thread without
// CAP_DAC_READ_SEARCH: prefer turns file handles off, mandatory fails.
func TestFileHandlesWithoutCapability(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	type result struct {
		fs  *FS
		err error
	}
	res := make(chan []result)
	go func() {
		// The thread is never unlocked, and its capability is put back
		// before the test goes on: a goroutine that ends locked takes its
		// thread with it, except the process's main thread, which the
		// runtime parks for good instead, as it is, where TestGuardThreads
		// would find it.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if _, _, e := syscall.RawSyscall(unix.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
			res <- nil
			return
		}
		full := data
		data[0].Effective &^= 1 << unix.CAP_DAC_READ_SEARCH
		if _, _, e := syscall.RawSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
			res <- nil
			return
		}
		var out []result
		for _, m := range []InodeFileHandles{FileHandlesPrefer, FileHandlesMandatory} {
			fs, err := New(Config{Root: root, InodeFileHandles: m})
			out = append(out, result{fs, err})
		}
		if _, _, e := syscall.RawSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&full[0])), 0); e != 0 {
			panic(fmt.Sprintf("capset: cannot put CAP_DAC_READ_SEARCH back: %v", e))
		}
		res <- out
	}()
	out := <-res
	if out == nil {
		t.Skip("cannot drop CAP_DAC_READ_SEARCH")
	}
	require.NoError(t, out[0].err)
	mode, note := out[0].fs.FileHandles()
	require.Equal(t, FileHandlesNever, mode)
	require.Contains(t, note, "CAP_DAC_READ_SEARCH")
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), nil, 0o644))
	eo, e := lookup(t, out[0].fs, RootID, "f")
	require.Zero(t, e)
	require.GreaterOrEqual(t, node(t, out[0].fs, eo.NodeId).fd, 0)
	out[0].fs.Destroy()
	require.ErrorContains(t, out[1].err, "CAP_DAC_READ_SEARCH")
}

// TestFileHandleInodeReuse deletes on the host a file the guest knows (not
// open, and with the descriptor cache off, so nothing holds it; a cached
// descriptor would keep its number from being reused) and creates another that gets its inode
// number: a lookup of the new one must give a new node id, not the stale
// one's.
func TestFileHandleInodeReuse(t *testing.T) {
	requireRoot(t)
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{Readdirplus: true, HandleCacheSize: -1})
		require.NoError(t, os.Mkdir(filepath.Join(root, "d"), 0o755))
		d, e := lookup(t, fs, RootID, "d")
		require.Zero(t, e)
		reused := 0
		for k := 0; k < 20; k++ {
			a, b := filepath.Join(root, "d", fmt.Sprint("a", k)), filepath.Join(root, "d", fmt.Sprint("b", k))
			require.NoError(t, os.WriteFile(a, []byte("old"), 0o644))
			old, e := lookup(t, fs, d.NodeId, fmt.Sprint("a", k))
			require.Zero(t, e)
			require.NoError(t, os.Remove(a))
			require.NoError(t, os.WriteFile(b, []byte("new!"), 0o644))
			eo, e := lookup(t, fs, d.NodeId, fmt.Sprint("b", k))
			require.Zero(t, e)
			if eo.Ino != old.Ino {
				continue
			}
			reused++
			if testHandles == FileHandlesNever {
				t.Fatal("an inode held by a descriptor had its number reused")
			}
			require.NotEqual(t, old.NodeId, eo.NodeId)
			ao, e := getattr(fs, eo.NodeId)
			require.Zero(t, e)
			require.EqualValues(t, 4, ao.Size)
			_, e = getattr(fs, old.NodeId)
			require.Equal(t, syscall.ESTALE, e)
			// Looked up again, and through READDIRPLUS: the new one.
			eo2, e := lookup(t, fs, d.NodeId, fmt.Sprint("b", k))
			require.Zero(t, e)
			require.Equal(t, eo.NodeId, eo2.NodeId)
			fs.Forget(old.NodeId, 1)
			eo3, e := lookup(t, fs, d.NodeId, fmt.Sprint("b", k))
			require.Zero(t, e)
			require.Equal(t, eo.NodeId, eo3.NodeId)
			fs.Forget(eo.NodeId, 3)
			require.NoError(t, os.Remove(b))
		}
		requireReuse(t, root, reused)
	})
}

// requireReuse fails a handle-mode inode reuse test in which no inode number
// was reused although the file system under dir does reuse them, and skips
// it when the file system never does (tmpfs): then the path it is there for
// did not run.
func requireReuse(t *testing.T, dir string, reused int) {
	t.Helper()
	t.Logf("%d of 20 inode numbers reused", reused)
	if testHandles == FileHandlesNever || reused > 0 {
		return
	}
	for k := 0; k < 20; k++ {
		p := filepath.Join(dir, fmt.Sprint("probe", k))
		var a, b unix.Stat_t
		require.NoError(t, os.WriteFile(p, nil, 0o644))
		require.NoError(t, unix.Stat(p, &a))
		require.NoError(t, os.Remove(p))
		require.NoError(t, os.WriteFile(p, nil, 0o644))
		require.NoError(t, unix.Stat(p, &b))
		require.NoError(t, os.Remove(p))
		if a.Ino == b.Ino {
			t.Fatal("the file system reuses inode numbers, but none was reused under the daemon")
		}
	}
	t.Skip("the file system under TMPDIR does not reuse inode numbers, so the reuse path did not run")
}

// BenchmarkFileHandles compares the per-request cost of the inode-backed
// requests with O_PATH descriptors, with file handles and their cache, and
// with file handles opened afresh each time.
func BenchmarkFileHandles(b *testing.B) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		hot   bool
		files int
	}{
		{"never", Config{InodeFileHandles: FileHandlesNever}, true, 1},
		{"prefer", Config{InodeFileHandles: FileHandlesPrefer}, true, 1},
		{"prefer-uncached", Config{InodeFileHandles: FileHandlesPrefer, HandleCacheSize: -1}, true, 1},
		{"prefer-1000-files", Config{InodeFileHandles: FileHandlesPrefer}, false, 1000},
		{"never-1000-files", Config{InodeFileHandles: FileHandlesNever}, false, 1000},
	} {
		fs, _ := newFS(b, tc.cfg)
		d := mkdir(b, fs, RootID, "d")
		ids := make([]uint64, tc.files)
		for k := range ids {
			c := create(b, fs, d, fmt.Sprint("f", k), unix.O_RDWR)
			fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
			ids[k] = c.NodeId
		}
		names := make([]fuse.Name, tc.files)
		for k := range names {
			names[k] = name(fmt.Sprint("f", k))
		}
		var ao gofuse.AttrOut
		var eo gofuse.EntryOut
		b.Run(tc.name+"/GETATTR", func(b *testing.B) {
			g := gofuse.GetAttrIn{}
			for n := 0; n < b.N; n++ {
				g.InHeader = hdr(ids[n%len(ids)])
				if e := fs.GetAttr(&g, &ao); e != 0 {
					b.Fatal(e)
				}
			}
		})
		b.Run(tc.name+"/LOOKUP", func(b *testing.B) {
			h := hdr(d)
			for n := 0; n < b.N; n++ {
				if e := fs.Lookup(&h, names[n%len(names)], &eo); e != 0 {
					b.Fatal(e)
				}
				fs.Forget(eo.NodeId, 1)
			}
		})
	}
}

// TestFileHandleInodeReuseCreate is TestFileHandleInodeReuse with the new file
// made by the guest's CREATE, whose lookup opens the name first: the
// stale node id must still not come back.
func TestFileHandleInodeReuseCreate(t *testing.T) {
	requireRoot(t)
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{HandleCacheSize: -1})
		reused := 0
		for k := 0; k < 20; k++ {
			a := filepath.Join(root, fmt.Sprint("a", k))
			require.NoError(t, os.WriteFile(a, []byte("old"), 0o644))
			old, e := lookup(t, fs, RootID, fmt.Sprint("a", k))
			require.Zero(t, e)
			require.NoError(t, os.Remove(a))
			co := create(t, fs, RootID, fmt.Sprint("c", k), unix.O_RDWR|unix.O_EXCL)
			if co.Attr.Ino == old.Attr.Ino {
				reused++
				require.NotEqual(t, old.NodeId, co.NodeId)
				_, e = getattr(fs, old.NodeId)
				require.Equal(t, syscall.ESTALE, e)
			}
			ao, e := getattr(fs, co.NodeId)
			require.Zero(t, e)
			require.Equal(t, co.Attr.Ino, ao.Ino)
		}
		requireReuse(t, root, reused)
	})
}
