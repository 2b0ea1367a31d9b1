// Tests of the mount table (mountfd.go): submounts, and mounts without
// file handles.

package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// count returns how many mounts with handles the table holds.
func (t *mountTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, m := range t.m {
		if m.fd >= 0 {
			n++
		}
	}
	return n
}

// inMountNamespace runs setup on a thread in a mount namespace of its own
// (mounts private), then keeps that thread (and so the namespace) until
// the test ends. Descriptors opened by setup see the namespace's mounts
// from any thread.
func inMountNamespace(t *testing.T, setup func() error) {
	t.Helper()
	res, done := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			res <- fmt.Errorf("skip: unshare: %w", err)
			return
		}
		if err := unix.Mount("none", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			res <- fmt.Errorf("skip: private mounts: %w", err)
			return
		}
		res <- setup()
		<-done
	}()
	err := <-res
	if err != nil && len(err.Error()) > 5 && err.Error()[:5] == "skip:" {
		t.Skip(err)
	}
	t.Cleanup(func() { close(done) })
	require.NoError(t, err)
}

// TestFileHandleSubmounts shares a directory with a tmpfs and a procfs (which
// gives no file handles) mounted below it.
func TestFileHandleSubmounts(t *testing.T) {
	requireRoot(t)
	for _, m := range []InodeFileHandles{FileHandlesPrefer, FileHandlesMandatory} {
		t.Run(m.String(), func(t *testing.T) {
			root := t.TempDir()
			var fs *FS
			inMountNamespace(t, func() error {
				for _, d := range []string{"tmp", "proc"} {
					if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
						return err
					}
				}
				if err := unix.Mount("tmpfs", filepath.Join(root, "tmp"), "tmpfs", 0, "size=1m"); err != nil {
					return fmt.Errorf("skip: mount tmpfs: %w", err)
				}
				if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", 0, ""); err != nil {
					return fmt.Errorf("skip: mount proc: %w", err)
				}
				if err := os.WriteFile(filepath.Join(root, "tmp", "f"), []byte("tmpfs"), 0o644); err != nil {
					return err
				}
				var err error
				fs, err = New(Config{Root: root, InodeFileHandles: m, AnnounceSubmounts: true})
				return err
			})
			defer fs.Destroy()
			fs.Init(fuse.InitInfo{Flags: fs.Capabilities()})
			mode, note := fs.FileHandles()
			require.Equal(t, m, mode)
			require.Empty(t, note)

			tmp, e := lookup(t, fs, RootID, "tmp")
			require.Zero(t, e)
			require.NotZero(t, tmp.Attr.Flags&gofuse.ATTR_SUBMOUNT)
			require.Equal(t, -1, node(t, fs, tmp.NodeId).fd)
			f, e := lookup(t, fs, tmp.NodeId, "f")
			require.Zero(t, e)
			require.Equal(t, -1, node(t, fs, f.NodeId).fd)
			fs.fdc.flush()
			var oo gofuse.OpenOut
			require.Zero(t, fs.Open(&gofuse.OpenIn{InHeader: hdr(f.NodeId), Flags: unix.O_RDONLY}, &oo))
			buf := make([]byte, 16)
			n, e := fs.Read(&gofuse.ReadIn{InHeader: hdr(f.NodeId), Fh: oo.Fh, Size: 16}, [][]byte{buf})
			require.Zero(t, e)
			require.Equal(t, "tmpfs", string(buf[:n]))
			fs.Release(&gofuse.ReleaseIn{InHeader: hdr(f.NodeId), Fh: oo.Fh})
			require.Equal(t, 2, fs.mounts.count(), "the root's mount and the tmpfs")
			// Once the guest forgets them, nothing keeps the tmpfs busy.
			fs.Forget(f.NodeId, 1)
			fs.Forget(tmp.NodeId, 1)
			require.Equal(t, 1, fs.mounts.count())
			tmp, e = lookup(t, fs, RootID, "tmp")
			require.Zero(t, e)
			f, e = lookup(t, fs, tmp.NodeId, "f")
			require.Zero(t, e)
			_, e = getattr(fs, f.NodeId)
			require.Zero(t, e)
			require.Equal(t, 2, fs.mounts.count())

			proc, e := lookup(t, fs, RootID, "proc")
			if m == FileHandlesMandatory {
				require.Equal(t, syscall.EOPNOTSUPP, e, "procfs gives no handles")
				inodes, _ := fs.Counts()
				require.Equal(t, 3, inodes)
				require.Equal(t, 2, fs.mounts.count())
				return
			}
			require.Zero(t, e)
			require.GreaterOrEqual(t, node(t, fs, proc.NodeId).fd, 0, "prefer falls back to a descriptor")
			v, e := lookup(t, fs, proc.NodeId, "version")
			require.Zero(t, e)
			require.GreaterOrEqual(t, node(t, fs, v.NodeId).fd, 0)
			_, e = getattr(fs, v.NodeId)
			require.Zero(t, e)
		})
	}
}
