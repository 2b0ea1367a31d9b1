package passthrough

import (
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestNoFlush(t *testing.T) {
	fs, root := newFS(t, Config{Cache: CacheAuto})
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(root, &st))
	quiet := noFlushFS[int64(st.Type)]
	t.Logf("share on f_type %#x: closing reports nothing: %v", st.Type, quiet)

	w := create(t, fs, 1, "w", unix.O_WRONLY)
	require.Equal(t, quiet, w.OpenOut.OpenFlags&gofuse.FOPEN_NOFLUSH != 0, "writable handle")
	require.Equal(t, syscall.Errno(0), fs.Flush(&gofuse.FlushIn{InHeader: hdr(w.NodeId), Fh: w.OpenOut.Fh}))

	var ro gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), fs.Open(&gofuse.OpenIn{InHeader: hdr(w.NodeId), Flags: unix.O_RDONLY}, &ro))
	require.NotZero(t, ro.OpenFlags&gofuse.FOPEN_NOFLUSH, "read-only handle")
	var tr gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), fs.Open(&gofuse.OpenIn{InHeader: hdr(w.NodeId), Flags: unix.O_RDONLY | unix.O_TRUNC}, &tr))
	require.Equal(t, quiet, tr.OpenFlags&gofuse.FOPEN_NOFLUSH != 0, "read-only handle that truncated")
	require.Equal(t, syscall.EBADF, fs.Flush(&gofuse.FlushIn{InHeader: hdr(w.NodeId), Fh: 9999}))

	// A file system with a flush operation of its own keeps FLUSH: procfs
	// stands in for one (it is not in the list).
	proc, err := unix.Open("/proc/self/status", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(proc)
	var pst unix.Statx_t
	require.NoError(t, unix.Statx(proc, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &pst))
	require.True(t, fs.flushNeeds.needsFlush(proc, pst.Mnt_id))
	require.True(t, fs.flushNeeds.needsFlush(-1, pst.Mnt_id), "remembered per mount")

	// Forwarded locks need FLUSH on every handle.
	fs.Init(fuse.InitInfo{Flags: fs.Capabilities() | gofuse.CAP_POSIX_LOCKS})
	var lk gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), fs.Open(&gofuse.OpenIn{InHeader: hdr(w.NodeId), Flags: unix.O_RDONLY}, &lk))
	require.Zero(t, lk.OpenFlags&gofuse.FOPEN_NOFLUSH)
}
