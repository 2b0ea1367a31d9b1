package passthrough

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestMigrationSearch moves an inode whose descriptor's link went stale: it
// was looked up by a name the host then removed, and lives on only under
// another hard link, deep in the tree. The source must find that name by
// walking the share.
func TestMigrationSearch(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		src, root := newFS(t, Config{Cache: CacheAuto})
		deep := filepath.Join(root, "d1", "d2", "d3")
		require.NoError(t, os.MkdirAll(deep, 0o755))
		for i := range 20 { // siblings the walk has to pass
			require.NoError(t, os.Mkdir(filepath.Join(root, "d1", "s"+string(rune('a'+i))), 0o755))
		}
		require.NoError(t, os.WriteFile(filepath.Join(root, "a"), []byte("kept"), 0o644))
		require.NoError(t, os.Link(filepath.Join(root, "a"), filepath.Join(deep, "b")))
		e, errno := lookup(t, src, 1, "a")
		require.Equal(t, syscall.Errno(0), errno)
		require.NoError(t, os.Remove(filepath.Join(root, "a")))

		m := src.Migration(MigrationConfig{})
		state, err := m.SaveState()
		require.NoError(t, err)
		require.Equal(t, 1, m.Counts().Searched, "inodes found by walking: %+v", m.Counts())

		dst, err := New(Config{Root: root, Cache: CacheAuto, InodeFileHandles: testHandles})
		require.NoError(t, err)
		t.Cleanup(dst.Destroy)
		require.NoError(t, dst.Migration(MigrationConfig{}).RestoreState(state))
		var out gofuse.AttrOut
		require.Equal(t, syscall.Errno(0), dst.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(e.NodeId)}, &out))
		require.Equal(t, e.Attr.Ino, out.Ino)
		require.Equal(t, uint64(4), out.Size)
	})
}

// forgedState is a filesystem state written field by field, as a
// compromised source host can send it.
type forgedState struct {
	mode                  uint8
	inodeNext, handleNext uint64
	inodes                []forgedInode
	handles               []forgedHandle
}

type forgedInode struct {
	id, lookups uint64
	mode        uint32
	ino         uint64
	kind        uint8 // 0 path, 1 file handle, 2 lost
	path, fh    []byte
	lost        string
}

type forgedHandle struct {
	fh, node uint64
	flags    uint32
	dir      bool
}

// bytes encodes f in the format of migrate.go.
func (f *forgedState) bytes() []byte {
	var w fuse.StateWriter
	w.U32(1)
	w.U8(f.mode)
	w.U8(0)
	w.U64(f.inodeNext)
	w.U64(f.handleNext)
	w.U32(uint32(len(f.inodes)))
	for _, s := range f.inodes {
		lookups := s.lookups
		if lookups == 0 {
			lookups = 1
		}
		w.U64(s.id)
		w.U64(lookups)
		w.U32(s.mode)
		w.U64(s.ino)
		w.U8(s.kind)
		w.Bytes16(s.path)
		w.Bytes16(s.fh)
		w.Bytes16([]byte(s.lost))
	}
	w.U32(uint32(len(f.handles)))
	for _, h := range f.handles {
		w.U64(h.fh)
		w.U64(h.node)
		w.U32(h.flags)
		if h.dir {
			w.U8(1)
		} else {
			w.U8(0)
		}
	}
	return w.Bytes()
}

// hostHandle returns the file handle (a struct file_handle) and inode
// number of path, skipping the test where this daemon could not open it
// again (no file handles on the filesystem, or no CAP_DAC_READ_SEARCH):
// there a forged handle is refused whatever the checks.
func hostHandle(t *testing.T, path string) ([]byte, uint64) {
	t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		t.Skipf("name_to_handle_at %s: %v", path, err)
	}
	mfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(mfd)
	fd, err := unix.OpenByHandleAt(mfd, h, unix.O_PATH)
	if err != nil {
		t.Skipf("open_by_handle_at: %v (needs CAP_DAC_READ_SEARCH)", err)
	}
	unix.Close(fd)
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st))
	b := make([]byte, 8, 8+len(h.Bytes()))
	binary.LittleEndian.PutUint32(b, uint32(h.Size()))
	binary.LittleEndian.PutUint32(b[4:], uint32(h.Type()))
	return append(b, h.Bytes()...), st.Ino
}

// migrationFixture makes base/share (what the daemon shares: "inside", a
// file, and "sub/g") and base/outside (a sibling on the same filesystem
// holding "secret").
func migrationFixture(t *testing.T) (share, outside string) {
	base := t.TempDir()
	share, outside = filepath.Join(base, "share"), filepath.Join(base, "outside")
	for _, d := range []string{share, outside, filepath.Join(share, "sub")} {
		require.NoError(t, os.Mkdir(d, 0o755))
	}
	for p, s := range map[string]string{
		filepath.Join(share, "inside"):   "inside",
		filepath.Join(share, "sub", "g"): "g",
		filepath.Join(outside, "secret"): "outside the share",
	} {
		require.NoError(t, os.WriteFile(p, []byte(s), 0o644))
	}
	return share, outside
}

// destinationFS is a fresh destination on share.
func destinationFS(t *testing.T, cfg Config) *FS {
	t.Helper()
	fs, err := New(cfg)
	require.NoError(t, err)
	fs.Init(fuse.InitInfo{Flags: fs.Capabilities()})
	t.Cleanup(fs.Destroy)
	return fs
}

// lostNode checks that node id is unknown to fs: GETATTR, OPEN, OPENDIR
// and LOOKUP beneath it fail with EBADF.
func lostNode(t *testing.T, fs *FS, id uint64) {
	t.Helper()
	var attr gofuse.AttrOut
	require.Equal(t, syscall.EBADF, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(id)}, &attr), "GETATTR of node id %d", id)
	var o gofuse.OpenOut
	require.Equal(t, syscall.EBADF, fs.Open(&gofuse.OpenIn{InHeader: hdr(id), Flags: uint32(os.O_RDONLY)}, &o), "OPEN of node id %d", id)
	require.Equal(t, syscall.EBADF, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(id)}, &o), "OPENDIR of node id %d", id)
	_, e := lookup(t, fs, id, "secret")
	require.Equal(t, syscall.EBADF, e, "LOOKUP beneath node id %d", id)
}

// readNode opens node id and returns its first bytes.
func readNode(t *testing.T, fs *FS, id uint64) string {
	t.Helper()
	var o gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), fs.Open(&gofuse.OpenIn{InHeader: hdr(id), Flags: uint32(os.O_RDONLY)}, &o), "OPEN of node id %d", id)
	defer fs.Release(&gofuse.ReleaseIn{InHeader: hdr(id), Fh: o.Fh})
	buf := make([]byte, 64)
	n, e := fs.Read(&gofuse.ReadIn{InHeader: hdr(id), Fh: o.Fh, Size: 64}, [][]byte{buf})
	require.Equal(t, syscall.Errno(0), e)
	return string(buf[:n])
}

// TestMigrationForgedHandles sends a destination a state whose file
// handle entries name inodes outside the shared directory, on its
// filesystem: a file and a directory beside the share, the share's
// parent, and the filesystem's root. A find-paths destination (the
// default) opens no file handle at all; a file-handles one opens them but
// keeps only those beneath the share ("inside", the control). Before, both
// entered every one of them, and the outside file was read through its
// node id.
func TestMigrationForgedHandles(t *testing.T) {
	share, outside := migrationFixture(t)
	secretFh, secretIno := hostHandle(t, filepath.Join(outside, "secret"))
	dirFh, dirIno := hostHandle(t, outside)
	parentFh, parentIno := hostHandle(t, filepath.Dir(share))
	insideFh, insideIno := hostHandle(t, filepath.Join(share, "inside"))
	var fsRoot unix.Statfs_t
	require.NoError(t, unix.Statfs(share, &fsRoot))
	state := forgedState{mode: 1, inodeNext: 10, handleNext: 3, inodes: []forgedInode{
		{id: 2, mode: unix.S_IFREG, ino: secretIno, kind: 1, fh: secretFh},
		{id: 3, mode: unix.S_IFDIR, ino: dirIno, kind: 1, fh: dirFh},
		{id: 4, mode: unix.S_IFDIR, ino: parentIno, kind: 1, fh: parentFh},
		{id: 5, mode: unix.S_IFREG, ino: insideIno, kind: 1, fh: insideFh},
	}, handles: []forgedHandle{
		{fh: 1, node: 2, flags: unix.O_RDONLY},
		{fh: 2, node: 3, dir: true},
	}}
	// ext4's root: inode 2, generation 0, FILEID_INO32_GEN.
	if fsRoot.Type == unix.EXT4_SUPER_MAGIC {
		state.inodes = append(state.inodes, forgedInode{id: 6, mode: unix.S_IFDIR, ino: 2, kind: 1,
			fh: []byte{8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}})
	}
	b := state.bytes()
	for _, mode := range []MigrationMode{MigrateFindPaths, MigrateFileHandles} {
		t.Run(mode.String(), func(t *testing.T) {
			// abort: the state is refused, nothing of it stays.
			fs := destinationFS(t, Config{Root: share})
			err := fs.Migration(MigrationConfig{Mode: mode}).RestoreState(b)
			require.Error(t, err, "a state naming inodes outside the share was taken")
			t.Logf("abort: %v", err)
			a, h := fs.Counts()
			require.Equal(t, 1, a, "inodes left after the refused state")
			require.Zero(t, h, "handles left after the refused state")
			for _, s := range state.inodes {
				lostNode(t, fs, s.id)
			}

			// guest-error: the outside entries are lost, the inside one
			// comes through by file handle in file-handles mode only.
			fs = destinationFS(t, Config{Root: share})
			m := fs.Migration(MigrationConfig{Mode: mode, OnError: MigrationGuestError})
			require.NoError(t, m.RestoreState(b))
			for _, s := range state.inodes {
				if s.id == 5 && mode == MigrateFileHandles {
					require.Equal(t, "inside", readNode(t, fs, 5))
					continue
				}
				lostNode(t, fs, s.id)
			}
			for _, fh := range []uint64{1, 2} {
				buf := make([]byte, 64)
				_, e := fs.Read(&gofuse.ReadIn{InHeader: hdr(2), Fh: fh, Size: 64}, [][]byte{buf})
				require.Equal(t, syscall.EBADF, e, "READ through handle %d", fh)
			}
			_, h = fs.Counts()
			require.Zero(t, h, "handles restored on inodes outside the share")
			t.Logf("guest-error: %+v", m.Counts())
		})
	}
}

// TestMigrationForgedPaths sends path entries that try to leave the share
// or reach a file other than the one named: "..", absolute paths and empty
// components are refused with the whole state; a path through a symlink
// (into the share, out of it, absolute) names no inode the source could
// have described (its paths come from the kernel and hold no symlink), and
// is lost. A symlink itself, named by its own path, is restored. Before,
// the symlinks were followed (kept in the share by RESOLVE_IN_ROOT) and
// their targets entered under the forged node ids.
func TestMigrationForgedPaths(t *testing.T) {
	share, outside := migrationFixture(t)
	require.NoError(t, os.Symlink("sub", filepath.Join(share, "ln")))
	require.NoError(t, os.Symlink("../outside", filepath.Join(share, "esc")))
	require.NoError(t, os.Symlink(outside, filepath.Join(share, "abs")))
	// What "esc" and "abs" lead to when resolved within the share.
	require.NoError(t, os.MkdirAll(filepath.Join(share, "outside"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(share, "outside", "secret"), []byte("decoy"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(share, outside), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(share, outside, "secret"), []byte("decoy"), 0o644))

	refused := []string{"..", "../outside/secret", "sub/../../outside/secret", outside + "/secret", "/etc/passwd", "./inside", "sub//g", "sub/", ""}
	for _, p := range refused {
		fs := destinationFS(t, Config{Root: share})
		st := forgedState{inodeNext: 3, handleNext: 1, inodes: []forgedInode{{id: 2, mode: unix.S_IFREG, kind: 0, path: []byte(p)}}}
		err := fs.Migration(MigrationConfig{OnError: MigrationGuestError}).RestoreState(st.bytes())
		require.Error(t, err, "path %q", p)
		lostNode(t, fs, 2)
	}

	st := forgedState{inodeNext: 10, handleNext: 1, inodes: []forgedInode{
		{id: 2, mode: unix.S_IFREG, kind: 0, path: []byte("ln/g")},
		{id: 3, mode: unix.S_IFREG, kind: 0, path: []byte("esc/secret")},
		{id: 4, mode: unix.S_IFREG, kind: 0, path: []byte("abs/secret")},
		{id: 5, mode: unix.S_IFDIR, kind: 0, path: []byte("esc")},
		{id: 6, mode: unix.S_IFLNK, kind: 0, path: []byte("abs")},
		{id: 7, mode: unix.S_IFREG, kind: 0, path: []byte("inside")},
	}}
	for _, onErr := range []MigrationOnError{MigrationAbort, MigrationGuestError} {
		fs := destinationFS(t, Config{Root: share})
		err := fs.Migration(MigrationConfig{OnError: onErr}).RestoreState(st.bytes())
		if onErr == MigrationAbort {
			require.Error(t, err, "abort took paths through symlinks")
			for id := uint64(2); id < 8; id++ {
				lostNode(t, fs, id)
			}
			continue
		}
		require.NoError(t, err)
		for _, id := range []uint64{2, 3, 4, 5} {
			lostNode(t, fs, id)
		}
		var attr gofuse.AttrOut
		require.Equal(t, syscall.Errno(0), fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(6)}, &attr))
		require.Equal(t, uint32(unix.S_IFLNK), attr.Mode&unix.S_IFMT, "the symlink itself")
		require.Equal(t, "inside", readNode(t, fs, 7))
	}
}

// TestMigrationForgedOpenFlags restores open handles whose flags a source
// could not have had: on a read-only share none is writable, O_TRUNC and
// O_CREAT do nothing, a directory opens read-only, and handles past the
// destination's MaxHandles (which the source, started with the same
// options, could not have held) refuse the state before any is opened.
// Before, a writable descriptor was restored on the read-only share, and
// every handle was opened whatever their number.
func TestMigrationForgedOpenFlags(t *testing.T) {
	share, _ := migrationFixture(t)
	st := forgedState{inodeNext: 3, handleNext: 10, inodes: []forgedInode{
		{id: 2, mode: unix.S_IFREG, kind: 0, path: []byte("inside")},
	}, handles: []forgedHandle{
		{fh: 1, node: 2, flags: unix.O_RDWR | unix.O_TRUNC | unix.O_CREAT},
		{fh: 2, node: 2, flags: unix.O_RDONLY | unix.O_TRUNC},
		{fh: 3, node: RootID, flags: unix.O_RDWR, dir: true},
		{fh: 4, node: 2, flags: unix.O_WRONLY | unix.O_APPEND},
	}}
	fs := destinationFS(t, Config{Root: share, Readonly: true})
	require.NoError(t, fs.Migration(MigrationConfig{OnError: MigrationGuestError}).RestoreState(st.bytes()))
	for _, fh := range []uint64{1, 4} {
		h := fs.openFiles.get(2, fh, fileOpen)
		if h != nil {
			h.put()
		}
		require.Nil(t, h, "a writable handle %d was restored on a read-only share", fh)
	}
	got, err := os.ReadFile(filepath.Join(share, "inside"))
	require.NoError(t, err)
	require.Equal(t, "inside", string(got), "the restore truncated the file")
	h := fs.openFiles.get(RootID, 3, dirOpen)
	require.NotNil(t, h, "the directory handle")
	fl, err := unix.FcntlInt(uintptr(h.fd), unix.F_GETFL, 0)
	h.put()
	require.NoError(t, err)
	require.Equal(t, unix.O_RDONLY, fl&unix.O_ACCMODE, "the directory's access mode")

	// One handle more than the destination allows.
	const most = 100
	st = forgedState{inodeNext: 2, handleNext: most + 2}
	for k := uint64(1); k <= most+1; k++ {
		st.handles = append(st.handles, forgedHandle{fh: k, node: RootID, dir: true})
	}
	for _, onErr := range []MigrationOnError{MigrationAbort, MigrationGuestError} {
		fs := destinationFS(t, Config{Root: share, MaxHandles: most})
		err := fs.Migration(MigrationConfig{OnError: onErr}).RestoreState(st.bytes())
		require.Error(t, err, "%d handles on a destination that allows %d", most+1, most)
		_, n := fs.Counts()
		require.Zero(t, n, "handles opened for a state refused")
	}
}

// TestMigrationStateMemory restores a forged 64 MiB state of minimal
// entries (inodes the source could not describe, handles on them) and
// measures what decoding and restoring allocate: at most half the state's
// size (the entries' node ids and handle ids, to check for duplicates).
// Before, every entry was decoded into a table entry several times its
// size, and a message was kept for each one lost.
func TestMigrationStateMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 64 MiB state")
	}
	share, _ := migrationFixture(t)
	const size = 64 << 20
	const inodeEntry, handleEntry = 35, 21
	nHandles := (size / 4) / handleEntry
	nInodes := (size - nHandles*handleEntry - 64) / inodeEntry
	st := forgedState{inodeNext: uint64(nInodes) + 2, handleNext: uint64(nHandles) + 1}
	st.inodes = make([]forgedInode, nInodes)
	for k := range st.inodes {
		st.inodes[k] = forgedInode{id: uint64(k) + 2, mode: unix.S_IFREG, kind: 2}
	}
	st.handles = make([]forgedHandle, nHandles)
	for k := range st.handles {
		st.handles[k] = forgedHandle{fh: uint64(k) + 1, node: uint64(k%nInodes) + 2}
	}
	b := st.bytes()
	st = forgedState{}
	fs := destinationFS(t, Config{Root: share, MaxHandles: nHandles})
	m := fs.Migration(MigrationConfig{OnError: MigrationGuestError})

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	})
	begin := time.Now()
	err := m.RestoreState(b)
	took := time.Since(begin)
	close(stop)
	wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	var grew uint64
	if p := max(peak.Load(), after.HeapAlloc); p > before.HeapAlloc {
		grew = p - before.HeapAlloc
	}
	t.Logf("state of %d bytes (%d inodes, %d handles): restore allocated %d bytes (%.2fx), heap peak +%d bytes (%.2fx) over the state, in %v; %v, %+v",
		len(b), nInodes, nHandles, alloc, float64(alloc)/float64(len(b)), grew, float64(grew)/float64(len(b)), took.Round(time.Millisecond), err, m.Counts())
	require.NoError(t, err)
	require.Equal(t, nInodes+nHandles, m.Counts().Lost)
	require.LessOrEqual(t, alloc, uint64(len(b)/2), "bytes allocated restoring the state")
}

// TestMigrationColdHandles migrates by file handle to a destination whose
// kernel has not seen the files (the filesystem mounted afresh, as on
// another host): there a regular file opened by its handle has no name
// (its link in /proc/self/fd is "/"), so the destination cannot tell from
// it that the file lies beneath the share. The path the source sends along
// with the handle settles it; without one the file is refused.
func TestMigrationColdHandles(t *testing.T) {
	if unix.Geteuid() != 0 {
		t.Skip("mounts a filesystem")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "img"), filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	if out, err := exec.Command("sh", "-c", "truncate -s 32M "+img+" && mkfs.ext4 -q "+img+" && mount -o loop "+img+" "+mnt).CombinedOutput(); err != nil {
		t.Skipf("no loop mount: %v: %s", err, out)
	}
	// The destination keeps its descriptors: detach the mount lazily.
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	share := filepath.Join(mnt, "share")
	require.NoError(t, os.MkdirAll(filepath.Join(share, "d"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(share, "d", "f"), []byte("cold"), 0o644))
	fh, ino := hostHandle(t, filepath.Join(share, "d", "f"))

	src, err := New(Config{Root: share})
	require.NoError(t, err)
	d, e := lookup(t, src, RootID, "d")
	require.Equal(t, syscall.Errno(0), e)
	f, e := lookup(t, src, d.NodeId, "f")
	require.Equal(t, syscall.Errno(0), e)
	state, err := src.Migration(MigrationConfig{Mode: MigrateFileHandles}).SaveState()
	require.NoError(t, err)
	src.Destroy()
	unix.Close(src.inodes.byID[RootID].fd)
	if out, err := exec.Command("sh", "-c", "umount "+mnt+" && mount -o loop "+img+" "+mnt).CombinedOutput(); err != nil {
		t.Fatalf("remounting: %v: %s", err, out)
	}

	// A handle alone, as a source that sends no path.
	dst := destinationFS(t, Config{Root: share})
	bare := forgedState{mode: 1, inodeNext: f.NodeId + 1, handleNext: 1, inodes: []forgedInode{
		{id: f.NodeId, mode: unix.S_IFREG, ino: ino, kind: 1, fh: fh},
	}}
	var why []string
	m := dst.Migration(MigrationConfig{Mode: MigrateFileHandles, OnError: MigrationGuestError, Logf: func(f string, a ...any) {
		why = append(why, fmt.Sprintf(f, a...))
	}})
	require.NoError(t, m.RestoreState(bare.bytes()))
	require.Equal(t, 1, m.Counts().Lost, "a nameless file by handle alone: %+v", m.Counts())
	require.Len(t, why, 1)
	require.Contains(t, why[0], "does not lie beneath the shared directory")
	lostNode(t, dst, f.NodeId)
	dst.Destroy()

	// The source's state: the handles with their paths.
	dst = destinationFS(t, Config{Root: share})
	m = dst.Migration(MigrationConfig{Mode: MigrateFileHandles})
	require.NoError(t, m.RestoreState(state))
	require.Equal(t, 2, m.Counts().Inodes)
	require.Equal(t, "cold", readNode(t, dst, f.NodeId))
}

// TestMigrationGuestShapedState: what a guest can make the source's
// state hold does not stop its migration: a handle whose node id it
// forgot (OPEN, then FORGET), and an inode whose only name is a path
// longer than the destination reads (left out, not written).
func TestMigrationGuestShapedState(t *testing.T) {
	src, root := newFS(t, Config{})
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("data"), 0o644))
	f, e := lookup(t, src, 1, "f")
	require.Equal(t, syscall.Errno(0), e)
	var oo gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), src.Open(&gofuse.OpenIn{InHeader: hdr(f.NodeId), Flags: unix.O_RDONLY}, &oo))
	src.Forget(f.NodeId, 1)
	// A handle of the root, which the state's inode table leaves out.
	var ro gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), src.OpenDir(&gofuse.OpenIn{InHeader: hdr(1)}, &ro))
	// A file known by a name that goes away, linked deep down.
	// (The host's own path is past PATH_MAX: walk with descriptors.)
	require.NoError(t, os.WriteFile(filepath.Join(root, "a"), nil, 0o644))
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	dfd, err := unix.Dup(rfd)
	require.NoError(t, err)
	for range 20 {
		d := strings.Repeat("d", 200)
		require.NoError(t, unix.Mkdirat(dfd, d, 0o755))
		nfd, err := unix.Openat(dfd, d, unix.O_PATH|unix.O_DIRECTORY, 0)
		require.NoError(t, err)
		unix.Close(dfd)
		dfd = nfd
	}
	require.NoError(t, unix.Linkat(rfd, "a", dfd, strings.Repeat("n", 250), 0))
	unix.Close(dfd)
	unix.Close(rfd)
	t.Cleanup(func() { exec.Command("rm", "-rf", filepath.Join(root, strings.Repeat("d", 200))).Run() })
	_, e = lookup(t, src, 1, "a")
	require.Equal(t, syscall.Errno(0), e)
	require.NoError(t, os.Remove(filepath.Join(root, "a")))
	state, err := src.Migration(MigrationConfig{}).SaveState()
	require.NoError(t, err)
	dst := destinationFS(t, Config{Root: root})
	require.NoError(t, dst.Migration(MigrationConfig{OnError: MigrationGuestError}).RestoreState(state))
	list := fuse.NewDirList(make([]byte, 4096), false)
	require.Equal(t, syscall.Errno(0), dst.ReadDir(&gofuse.ReadIn{InHeader: hdr(1), Fh: ro.Fh, Size: 4096}, &list), "the root's handle")
	require.Positive(t, list.Len())
}
