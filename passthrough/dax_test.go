package passthrough

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const ioctlFsSetXattr = 0x401c5820 // FS_IOC_FSSETXATTR

// setXflagDAX sets or clears FS_XFLAG_DAX on path, as chattr +x does. A
// filesystem that cannot hold the flag fails the test: InodeDAX's rule
// cannot be checked there.
func setXflagDAX(t *testing.T, path string, on bool) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	var x fsxattr
	if _, _, e := syscall.Syscall(unix.SYS_IOCTL, uintptr(fd), IoctlFsGetXattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		t.Fatalf("FS_IOC_FSGETXATTR on %s: %v", path, e)
	}
	x.xflags &^= fsXflagDAX
	if on {
		x.xflags |= fsXflagDAX
	}
	if _, _, e := syscall.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlFsSetXattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		t.Fatalf("FS_IOC_FSSETXATTR on %s: %v (the test directory's filesystem must hold FS_XFLAG_DAX, as ext4 and xfs do)", path, e)
	}
}

// TestInodeDAX checks the dax=inode rule: a regular file is DAX when it
// carries FS_XFLAG_DAX; a file made in a flagged directory inherits the
// flag (ext4, xfs); directories and symlinks never are; GETATTR (no
// parent) answers from what the last lookup found.
func TestInodeDAX(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{})
		must := func(err error) {
			t.Helper()
			require.NoError(t, err)
		}
		must(os.WriteFile(filepath.Join(root, "on"), []byte("dax"), 0o644))
		must(os.WriteFile(filepath.Join(root, "off"), []byte("page cache"), 0o644))
		must(os.Mkdir(filepath.Join(root, "daxdir"), 0o755))
		must(os.Symlink("on", filepath.Join(root, "link")))
		setXflagDAX(t, filepath.Join(root, "on"), true)
		setXflagDAX(t, filepath.Join(root, "daxdir"), true)
		must(os.WriteFile(filepath.Join(root, "daxdir", "inherited"), []byte("x"), 0o644))

		node := func(parent uint64, n string) uint64 {
			t.Helper()
			e, errno := lookup(t, fs, parent, n)
			require.Equal(t, syscall.Errno(0), errno, n)
			return e.NodeId
		}
		on, off := node(RootID, "on"), node(RootID, "off")
		dir, link := node(RootID, "daxdir"), node(RootID, "link")
		inherited := node(dir, "inherited")
		for _, tc := range []struct {
			name         string
			node, parent uint64
			want         bool
		}{
			{"flagged file", on, RootID, true},
			{"plain file", off, RootID, false},
			{"flagged directory", dir, RootID, false},
			{"symlink to a flagged file", link, RootID, false},
			{"file made in a flagged directory", inherited, dir, true},
			{"no such node", 999, RootID, false},
		} {
			if got := fs.InodeDAX(tc.node, tc.parent); got != tc.want {
				t.Errorf("%s: InodeDAX %v, want %v", tc.name, got, tc.want)
			}
		}
		// The flag changes on the host: GETATTR keeps the last answer,
		// the next lookup (with its parent) sees the change.
		setXflagDAX(t, filepath.Join(root, "on"), false)
		require.True(t, fs.InodeDAX(on, 0), "GETATTR after the host cleared the flag")
		require.False(t, fs.InodeDAX(on, RootID), "LOOKUP after the host cleared the flag")
		require.False(t, fs.InodeDAX(on, 0), "GETATTR after that LOOKUP")
		// Never asked with a parent: GETATTR works it out.
		must(os.WriteFile(filepath.Join(root, "later"), nil, 0o644))
		setXflagDAX(t, filepath.Join(root, "later"), true)
		require.True(t, fs.InodeDAX(node(RootID, "later"), 0), "GETATTR first")
	})
}
