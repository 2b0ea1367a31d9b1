package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestHandleOfAnotherNode sends every request that names a handle with
// the handle of another node, or of the other kind (a directory's to a
// file's request and the reverse): each is refused with EBADF, acts on
// nothing (the other file keeps its size and data), and a RELEASE or
// RELEASEDIR of such a pair closes nothing. Before, the handle was used
// whatever node the request named: a WRITE or FALLOCATE on node A with
// B's handle grew B, though the server had checked the new size against
// A (the DAX window's bound), and a RELEASE of A with B's handle closed B.
func TestHandleOfAnotherNode(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{})
		a := create(t, fs, RootID, "a", unix.O_RDWR)
		b := create(t, fs, RootID, "b", unix.O_RDWR)
		require.NoError(t, os.WriteFile(filepath.Join(root, "b"), []byte("bbbb"), 0o644))
		d := mkdir(t, fs, RootID, "d")
		var do gofuse.OpenOut
		require.Zero(t, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(d)}, &do))
		_, before := fs.Counts()
		require.Equal(t, 3, before)

		buf := make([]byte, 16)
		wrongs := []struct {
			what     string
			node, fh uint64
		}{
			{"B's handle on node A", a.NodeId, b.Fh},
			{"a directory's handle on its own node", d, do.Fh},
			{"a directory's handle on node A", a.NodeId, do.Fh},
			{"B's handle on the root", RootID, b.Fh},
		}
		for _, w := range wrongs {
			h := hdr(w.node)
			_, e := fs.Read(&gofuse.ReadIn{InHeader: h, Fh: w.fh, Size: 16}, [][]byte{buf})
			require.Equal(t, syscall.EBADF, e, "READ, %s", w.what)
			_, e = fs.Write(&gofuse.WriteIn{InHeader: h, Fh: w.fh, Offset: 1 << 20, Size: 4}, [][]byte{[]byte("evil")})
			require.Equal(t, syscall.EBADF, e, "WRITE, %s", w.what)
			require.Equal(t, syscall.EBADF, fs.Fallocate(&gofuse.FallocateIn{InHeader: h, Fh: w.fh, Length: 1 << 20}), "FALLOCATE, %s", w.what)
			require.Equal(t, syscall.EBADF, fs.Lseek(&gofuse.LseekIn{InHeader: h, Fh: w.fh, Whence: unix.SEEK_DATA}, &gofuse.LseekOut{}), "LSEEK, %s", w.what)
			require.Equal(t, syscall.EBADF, fs.Flush(&gofuse.FlushIn{InHeader: h, Fh: w.fh}), "FLUSH, %s", w.what)
			require.Equal(t, syscall.EBADF, fs.Fsync(&gofuse.FsyncIn{InHeader: h, Fh: w.fh}), "FSYNC, %s", w.what)
			var ao gofuse.AttrOut
			if w.node != d {
				require.Equal(t, syscall.EBADF, fs.GetAttr(&gofuse.GetAttrIn{InHeader: h, Flags_: gofuse.FUSE_GETATTR_FH, Fh_: w.fh}, &ao), "GETATTR, %s", w.what)
				require.Equal(t, syscall.EBADF, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: h, Valid: gofuse.FATTR_FH | gofuse.FATTR_SIZE, Fh: w.fh, Size: 1 << 20}}, &ao), "SETATTR, %s", w.what)
			}
			fs.Release(&gofuse.ReleaseIn{InHeader: h, Fh: w.fh})
		}
		// COPY_FILE_RANGE: each side's handle must be of its node.
		for _, c := range []struct {
			what                  string
			nodeIn, fhIn, nodeOut uint64
			fhOut                 uint64
		}{
			{"the source handle of another node", a.NodeId, b.Fh, a.NodeId, a.Fh},
			{"the destination handle of another node", a.NodeId, a.Fh, a.NodeId, b.Fh},
			{"a directory handle as the source", d, do.Fh, b.NodeId, b.Fh},
		} {
			_, e := fs.CopyFileRange(&gofuse.CopyFileRangeIn{InHeader: hdr(c.nodeIn), FhIn: c.fhIn, NodeIdOut: c.nodeOut, FhOut: c.fhOut, Len: 4, OffOut: 1 << 20})
			require.Equal(t, syscall.EBADF, e, "COPY_FILE_RANGE with %s", c.what)
		}
		// The directory requests with a file's handle, or another
		// directory's.
		for _, w := range []struct {
			what     string
			node, fh uint64
		}{
			{"a file's handle on its own node", b.NodeId, b.Fh},
			{"the directory's handle on the root", RootID, do.Fh},
		} {
			for _, plus := range []bool{false, true} {
				dl := fuse.NewDirList(make([]byte, 4096), plus)
				require.Equal(t, syscall.EBADF, fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(w.node), Fh: w.fh, Size: 4096}, &dl), "READDIR, %s", w.what)
				require.Zero(t, dl.Len())
			}
			require.Equal(t, syscall.EBADF, fs.FsyncDir(&gofuse.FsyncIn{InHeader: hdr(w.node), Fh: w.fh}), "FSYNCDIR, %s", w.what)
			fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(w.node), Fh: w.fh})
		}

		// Nothing was released or changed.
		_, after := fs.Counts()
		require.Equal(t, before, after, "a RELEASE of a mismatched handle closed it")
		got, err := os.ReadFile(filepath.Join(root, "b"))
		require.NoError(t, err)
		require.Equal(t, "bbbb", string(got), "B changed through a request on another node")
		fi, err := os.Stat(filepath.Join(root, "a"))
		require.NoError(t, err)
		require.Zero(t, fi.Size())

		// Each handle still serves its own node, of its own kind.
		n, e := fs.Read(&gofuse.ReadIn{InHeader: hdr(b.NodeId), Fh: b.Fh, Size: 16}, [][]byte{buf})
		require.Zero(t, e)
		require.Equal(t, "bbbb", string(buf[:n]))
		require.Zero(t, fs.Fsync(&gofuse.FsyncIn{InHeader: hdr(b.NodeId), Fh: b.Fh}))
		require.Zero(t, fs.Flush(&gofuse.FlushIn{InHeader: hdr(b.NodeId), Fh: b.Fh}))
		var ao gofuse.AttrOut
		require.Zero(t, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(b.NodeId), Flags_: gofuse.FUSE_GETATTR_FH, Fh_: b.Fh}, &ao))
		require.EqualValues(t, 4, ao.Size)
		// SETATTR (futimens) may name a directory's handle.
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: hdr(d), Valid: gofuse.FATTR_FH | gofuse.FATTR_MTIME, Fh: do.Fh, Mtime: 1}}, &ao))
		cn, e := fs.CopyFileRange(&gofuse.CopyFileRangeIn{InHeader: hdr(b.NodeId), FhIn: b.Fh, NodeIdOut: a.NodeId, FhOut: a.Fh, Len: 4})
		require.Zero(t, e)
		require.EqualValues(t, 4, cn)
		dl := fuse.NewDirList(make([]byte, 4096), false)
		require.Zero(t, fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(d), Fh: do.Fh, Size: 4096}, &dl))
		require.NotZero(t, dl.Len())
		require.Zero(t, fs.FsyncDir(&gofuse.FsyncIn{InHeader: hdr(d), Fh: do.Fh}))

		// A handle serves after its node id is forgotten, with that id.
		fs.Forget(b.NodeId, 1)
		n, e = fs.Read(&gofuse.ReadIn{InHeader: hdr(b.NodeId), Fh: b.Fh, Size: 16}, [][]byte{buf})
		require.Zero(t, e)
		require.Equal(t, "bbbb", string(buf[:n]))

		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(a.NodeId), Fh: a.Fh})
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(b.NodeId), Fh: b.Fh})
		fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(d), Fh: do.Fh})
		_, after = fs.Counts()
		require.Zero(t, after)
	})
}

// TestCreateRacingForget creates files while another goroutine forgets
// the newest node id as soon as it is issued, as a guest that guesses the
// id of a CREATE in flight can: every CREATE succeeds, with a handle that
// serves under the node id it returned, and once the guest forgets and
// releases everything the daemon holds nothing. Before, a CREATE whose
// node id was forgotten between its lookup and its handle failed with
// EIO, leaving behind the file it had created.
func TestCreateRacingForget(t *testing.T) {
	fs, root := newFS(t, Config{})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var forgets atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := uint64(0)
		for !stop.Load() {
			fs.inodes.mu.Lock()
			id := fs.inodes.next - 1
			fs.inodes.mu.Unlock()
			if id != last && id > RootID {
				fs.Forget(id, 1)
				forgets.Add(1)
				last = id
			}
		}
	}()
	const n = 5000
	failed := 0
	for k := range n {
		nm := fmt.Sprint("f", k)
		in := gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR | unix.O_EXCL, Mode: 0o644 | unix.S_IFREG}
		var out gofuse.CreateOut
		if e := fs.Create(&in, name(nm), &out); e != 0 {
			failed++
			_, err := os.Lstat(filepath.Join(root, nm))
			require.True(t, os.IsNotExist(err), "CREATE %s failed (%v) and left its file", nm, e)
			continue
		}
		_, e := fs.Write(&gofuse.WriteIn{InHeader: hdr(out.NodeId), Fh: out.Fh, Size: 1}, [][]byte{[]byte("x")})
		require.Zero(t, e, "WRITE through the handle of CREATE %s", nm)
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(out.NodeId), Fh: out.Fh})
		fs.Forget(out.NodeId, 1) // a no-op if the racer got there first
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d CREATEs, %d FORGETs of the newest node id", n, forgets.Load())
	require.Zero(t, failed, "CREATEs failed")
	inodes, handles := fs.Counts()
	require.Equal(t, 1, inodes, "node ids left")
	require.Zero(t, handles, "handles left")
}

// TestMigratedHandleKeepsNode migrates open handles and checks that each
// serves on the destination with the node id it was opened on, and only
// with that one and its own kind.
func TestMigratedHandleKeepsNode(t *testing.T) {
	src, root := newFS(t, Config{})
	require.NoError(t, os.WriteFile(filepath.Join(root, "a"), []byte("aaaa"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "b"), []byte("bbbb"), 0o644))
	a, e := lookup(t, src, RootID, "a")
	require.Zero(t, e)
	b, e := lookup(t, src, RootID, "b")
	require.Zero(t, e)
	var ao, bo, ro gofuse.OpenOut
	require.Zero(t, src.Open(&gofuse.OpenIn{InHeader: hdr(a.NodeId), Flags: unix.O_RDWR}, &ao))
	require.Zero(t, src.Open(&gofuse.OpenIn{InHeader: hdr(b.NodeId), Flags: unix.O_RDWR}, &bo))
	require.Zero(t, src.OpenDir(&gofuse.OpenIn{InHeader: hdr(RootID)}, &ro))
	state, err := src.Migration(MigrationConfig{}).SaveState()
	require.NoError(t, err)
	dst := destinationFS(t, Config{Root: root})
	require.NoError(t, dst.Migration(MigrationConfig{}).RestoreState(state))

	buf := make([]byte, 16)
	_, e = dst.Read(&gofuse.ReadIn{InHeader: hdr(a.NodeId), Fh: bo.Fh, Size: 16}, [][]byte{buf})
	require.Equal(t, syscall.EBADF, e, "B's restored handle on node A")
	_, e = dst.Read(&gofuse.ReadIn{InHeader: hdr(RootID), Fh: ro.Fh, Size: 16}, [][]byte{buf})
	require.Equal(t, syscall.EBADF, e, "the root's directory handle for READ")
	dst.Release(&gofuse.ReleaseIn{InHeader: hdr(a.NodeId), Fh: bo.Fh})
	dst.Release(&gofuse.ReleaseIn{InHeader: hdr(RootID), Fh: ro.Fh})
	for _, c := range []struct {
		node, fh uint64
		want     string
	}{{a.NodeId, ao.Fh, "aaaa"}, {b.NodeId, bo.Fh, "bbbb"}} {
		n, e := dst.Read(&gofuse.ReadIn{InHeader: hdr(c.node), Fh: c.fh, Size: 16}, [][]byte{buf})
		require.Zero(t, e)
		require.Equal(t, c.want, string(buf[:n]))
	}
	dl := fuse.NewDirList(make([]byte, 4096), false)
	require.Zero(t, dst.ReadDir(&gofuse.ReadIn{InHeader: hdr(RootID), Fh: ro.Fh, Size: 4096}, &dl))
	_, handles := dst.Counts()
	require.Equal(t, 3, handles)
}
