package passthrough

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestGateSpecialFiles sends every request that opens a guest-named entry
// at each kind of special file a guest can make with MKNOD (a fifo, a
// socket, a char device: /dev/urandom's 1:9), and at the wrong kind of
// ordinary file: each is refused, none blocks, and none opens the device.
// CREATE without O_EXCL on an existing name once opened whatever was there.
func TestGateSpecialFiles(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{Xattr: true})
		require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o666))
		require.NoError(t, unix.Mknod(filepath.Join(root, "sock"), unix.S_IFSOCK|0o666, 0))
		require.NoError(t, os.WriteFile(filepath.Join(root, "file"), []byte("data"), 0o644))
		require.NoError(t, os.Mkdir(filepath.Join(root, "dir"), 0o755))
		special := []string{"fifo", "sock"}
		if os.Geteuid() == 0 {
			require.NoError(t, unix.Mknod(filepath.Join(root, "chr"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 9))))
			special = append(special, "chr")
		} else {
			t.Log("not root: no device node made")
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, n := range special {
				for _, flags := range []uint32{unix.O_RDONLY, unix.O_WRONLY, unix.O_RDWR, unix.O_RDWR | unix.O_TRUNC} {
					in := gofuse.CreateIn{InHeader: hdr(1), Flags: flags, Mode: 0o644 | unix.S_IFREG}
					var out gofuse.CreateOut
					require.Equal(t, syscall.EACCES, fs.Create(&in, name(n), &out), "CREATE %s flags %#o", n, flags)
				}
				e, errno := lookup(t, fs, 1, n)
				require.Equal(t, syscall.Errno(0), errno)
				var oo gofuse.OpenOut
				require.Equal(t, syscall.EACCES, fs.Open(&gofuse.OpenIn{InHeader: hdr(e.NodeId), Flags: unix.O_RDONLY}, &oo), "OPEN %s", n)
				require.Equal(t, syscall.ENOTDIR, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(e.NodeId)}, &oo), "OPENDIR %s", n)
				var ao gofuse.AttrOut
				sa := gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: hdr(e.NodeId), Valid: gofuse.FATTR_SIZE}}
				require.NotEqual(t, syscall.Errno(0), fs.SetAttr(&sa, &ao), "SETATTR size %s", n)
				_, errno = fs.MappingFd(e.NodeId, false)
				require.Equal(t, syscall.EACCES, errno, "DAX mapping of %s", n)
				h := hdr(e.NodeId)
				var buf [64]byte
				fs.GetXAttr(&h, name("user.x"), buf[:]) // served without opening
				require.Equal(t, syscall.EACCES, fs.SyncFs(&h), "SYNCFS %s", n)
			}
			f, _ := lookup(t, fs, 1, "file")
			var oo gofuse.OpenOut
			require.Equal(t, syscall.ENOTDIR, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(f.NodeId)}, &oo), "OPENDIR of a file")
			in := gofuse.CreateIn{InHeader: hdr(1), Flags: unix.O_RDWR, Mode: 0o644 | unix.S_IFREG}
			var co gofuse.CreateOut
			require.Equal(t, syscall.EISDIR, fs.Create(&in, name("dir"), &co), "CREATE over a directory")
			// An existing regular file still opens.
			require.Equal(t, syscall.Errno(0), fs.Create(&in, name("file"), &co))
			fs.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("a request blocked on a special file")
		}
	})
}

// TestGateOpenFlags: flags that change what an open does (O_PATH, which
// turns O_CREAT and O_EXCL off; O_TMPFILE; O_DIRECTORY) never reach the
// host's open: CREATE O_PATH|O_EXCL on an existing file is EEXIST and
// leaves the file, and on a fifo opens nothing.
func TestGateOpenFlags(t *testing.T) {
	fs, root := newFS(t, Config{})
	require.NoError(t, os.WriteFile(filepath.Join(root, "file"), []byte("data"), 0o644))
	require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o666))
	for _, fl := range []uint32{unix.O_PATH, unix.O_PATH | unix.O_EXCL, unix.O_TMPFILE | unix.O_RDWR, unix.O_DIRECTORY} {
		in := gofuse.CreateIn{InHeader: hdr(1), Flags: fl | unix.O_EXCL, Mode: 0o644}
		var out gofuse.CreateOut
		require.Equal(t, syscall.EEXIST, fs.Create(&in, name("file"), &out), "flags %#o", fl)
		in.Flags = fl &^ unix.O_EXCL
		require.Equal(t, syscall.EACCES, fs.Create(&in, name("fifo"), &out), "flags %#o", fl)
	}
	b, err := os.ReadFile(filepath.Join(root, "file"))
	require.NoError(t, err)
	require.Equal(t, "data", string(b))
	// OPEN with O_PATH gets a descriptor that reads.
	e, errno := lookup(t, fs, 1, "file")
	require.Equal(t, syscall.Errno(0), errno)
	var oo gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), fs.Open(&gofuse.OpenIn{InHeader: hdr(e.NodeId), Flags: unix.O_PATH}, &oo))
	buf := make([]byte, 4)
	n, errno := fs.Read(&gofuse.ReadIn{InHeader: hdr(e.NodeId), Fh: oo.Fh, Size: 4}, [][]byte{buf})
	require.Equal(t, syscall.Errno(0), errno)
	require.Equal(t, "data", string(buf[:n]))
}
