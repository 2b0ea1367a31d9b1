package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// name returns s as a fuse.Name, NUL-terminated as the server delivers it.
func name(s string) fuse.Name {
	b := append([]byte(s), 0)
	return fuse.Name(b[:len(s)])
}

func hdr(node uint64) gofuse.InHeader {
	return gofuse.InHeader{NodeId: node, Caller: gofuse.Caller{Owner: gofuse.Owner{Uid: 0, Gid: 0}}}
}

// testHandles is the file handle policy newFS uses when the config asks
// for none; eachMode runs a test under each.
var testHandles = FileHandlesNever

// eachMode runs f as a subtest with inodes held by O_PATH descriptors
// ("never") and by file handles ("prefer").
func eachMode(t *testing.T, f func(t *testing.T)) {
	for _, m := range []InodeFileHandles{FileHandlesNever, FileHandlesPrefer} {
		t.Run(m.String(), func(t *testing.T) {
			old := testHandles
			testHandles = m
			defer func() { testHandles = old }()
			f(t)
		})
	}
}

func newFS(t testing.TB, cfg Config) (*FS, string) {
	t.Helper()
	root := t.TempDir()
	cfg.Root = root
	if cfg.InodeFileHandles == FileHandlesNever {
		cfg.InodeFileHandles = testHandles
	}
	fs, err := New(cfg)
	require.NoError(t, err)
	requireHandles(t, fs, cfg.InodeFileHandles)
	fs.Init(fuse.InitInfo{Flags: fs.Capabilities()})
	t.Cleanup(fs.Destroy)
	return fs, root
}

// requireHandles skips the test when file handles were asked for but do
// not work on the share.
func requireHandles(t testing.TB, fs *FS, want InodeFileHandles) {
	t.Helper()
	if m, note := fs.FileHandles(); m != want || note != "" {
		t.Skipf("file handles %v unavailable: %s", want, note)
	}
}

func lookup(t testing.TB, fs *FS, parent uint64, n string) (gofuse.EntryOut, syscall.Errno) {
	h := hdr(parent)
	var out gofuse.EntryOut
	e := fs.Lookup(&h, name(n), &out)
	return out, e
}

func create(t testing.TB, fs *FS, parent uint64, n string, flags uint32) gofuse.CreateOut {
	in := gofuse.CreateIn{InHeader: hdr(parent), Flags: flags, Mode: 0o644 | unix.S_IFREG}
	var out gofuse.CreateOut
	require.Equal(t, syscall.Errno(0), fs.Create(&in, name(n), &out))
	return out
}

func TestCreateWriteReadLookup(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{})
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		data := []byte("hello, world")
		w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: uint32(len(data))}
		n, e := fs.Write(&w, [][]byte{data[:5], data[5:]})
		require.Zero(t, e)
		require.EqualValues(t, len(data), n)
		got, err := os.ReadFile(filepath.Join(root, "f"))
		require.NoError(t, err)
		require.Equal(t, data, got)

		buf := make([]byte, 100)
		r := gofuse.ReadIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Offset: 7, Size: 100}
		rn, e := fs.Read(&r, [][]byte{buf[:3], buf[3:]})
		require.Zero(t, e)
		require.Equal(t, "world", string(buf[:rn]))

		// A second name for the same file gets the same node id.
		require.NoError(t, os.Link(filepath.Join(root, "f"), filepath.Join(root, "g")))
		eo, e := lookup(t, fs, RootID, "g")
		require.Zero(t, e)
		require.Equal(t, c.NodeId, eo.NodeId)
		require.EqualValues(t, 2, eo.Nlink)
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
		_, handles := fs.Counts()
		require.Zero(t, handles)
	})
}

func TestUnknownIdsAndHandles(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, _ := newFS(t, Config{})
		_, e := lookup(t, fs, 999, "x")
		require.Equal(t, syscall.EBADF, e)
		r := gofuse.ReadIn{InHeader: hdr(RootID), Fh: 12345, Size: 10}
		_, e = fs.Read(&r, [][]byte{make([]byte, 10)})
		require.Equal(t, syscall.EBADF, e)
		var ao gofuse.AttrOut
		require.Equal(t, syscall.EBADF, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(77)}, &ao))
		// A forgotten node id is gone.
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
		fs.Forget(c.NodeId, 1)
		require.Equal(t, syscall.EBADF, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(c.NodeId)}, &ao))
		// Forgetting more than was looked up, or the root, is harmless.
		fs.Forget(c.NodeId, 100)
		fs.Forget(RootID, 1<<40)
		require.Zero(t, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(RootID)}, &ao))
	})
}

// TestNoEscape checks that symlinks, fifos and device nodes in the share do
// not lead anywhere: a symlink is looked up as itself and never opened, and
// only regular files and directories can be opened.
func TestNoEscape(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{})
		outside := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644))
		require.NoError(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "abs")))
		require.NoError(t, os.Symlink("../../../../../../"+outside, filepath.Join(root, "rel")))
		require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
		require.NoError(t, unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))

		for _, n := range []string{"abs", "rel"} {
			eo, e := lookup(t, fs, RootID, n)
			require.Zero(t, e)
			require.EqualValues(t, unix.S_IFLNK, eo.Mode&unix.S_IFMT, n)
			var oo gofuse.OpenOut
			require.Equal(t, syscall.ELOOP, fs.Open(&gofuse.OpenIn{InHeader: hdr(eo.NodeId), Flags: unix.O_RDONLY}, &oo))
			// Looking up beneath a symlink fails: it is not a directory.
			_, e = lookup(t, fs, eo.NodeId, "secret")
			require.Equal(t, syscall.ENOTDIR, e)
		}
		for _, n := range []string{"fifo", "null"} {
			eo, e := lookup(t, fs, RootID, n)
			require.Zero(t, e)
			var oo gofuse.OpenOut
			require.Equal(t, syscall.EACCES, fs.Open(&gofuse.OpenIn{InHeader: hdr(eo.NodeId), Flags: unix.O_RDWR}, &oo), n)
		}
		// Creating through a symlinked directory name does not follow it.
		in := gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR | unix.O_CREAT, Mode: 0o644}
		var co gofuse.CreateOut
		require.NotZero(t, fs.Create(&in, name("abs"), &co))
		_, err := os.Stat(filepath.Join(outside, "secret"))
		require.NoError(t, err)
		b, _ := os.ReadFile(filepath.Join(outside, "secret"))
		require.Equal(t, "secret", string(b))
	})
}

func TestReadDirPlusResumes(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := newFS(t, Config{Readdirplus: true})
		const n = 300
		for i := 0; i < n; i++ {
			require.NoError(t, os.WriteFile(filepath.Join(root, "file-"+string(rune('a'+i%26))+string(rune('a'+i/26))), nil, 0o644))
		}
		var oo gofuse.OpenOut
		require.Zero(t, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(RootID)}, &oo))
		seen := map[string]bool{}
		var off uint64
		buf := make([]byte, 4096)
		for round := 0; round < 100; round++ {
			dl := fuse.NewDirList(buf, true)
			require.Zero(t, fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(RootID), Fh: oo.Fh, Offset: off, Size: 4096}, &dl))
			if dl.Len() == 0 {
				break
			}
			fuse.WalkDirList(buf[:dl.Len()], true, func(nm string, next uint64, eo *gofuse.EntryOut) {
				require.False(t, seen[nm], "entry %s listed twice", nm)
				seen[nm] = true
				off = next
				if nm != "." && nm != ".." {
					require.NotZero(t, eo.NodeId, nm)
				}
			})
		}
		require.Len(t, seen, n+2)
		fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(RootID), Fh: oo.Fh})
	})
}

func TestAllocations(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, _ := newFS(t, Config{})
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		buf := make([]byte, 4096)
		segs := [][]byte{buf}
		w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 4096}
		r := gofuse.ReadIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 4096}
		g := gofuse.GetAttrIn{InHeader: hdr(c.NodeId)}
		h := hdr(RootID)
		nm := name("f")
		var ao gofuse.AttrOut
		var eo gofuse.EntryOut
		for _, tc := range []struct {
			op string
			f  func()
		}{
			{"GETATTR", func() { fs.GetAttr(&g, &ao) }},
			{"LOOKUP", func() { fs.Lookup(&h, nm, &eo); fs.Forget(eo.NodeId, 1) }},
			{"WRITE", func() { fs.Write(&w, segs) }},
			{"READ", func() { fs.Read(&r, segs) }},
		} {
			require.Zero(t, testing.AllocsPerRun(200, tc.f), tc.op)
		}
	})
}

// TestNewFailsWithoutLeaks makes New fail at each step after the shared
// directory is open that a test can make fail, and checks that it leaves
// no descriptor open and closes none it did not open (Config.ProcSelfFd is
// the caller's). It once leaked the shared directory's and the working
// directory's descriptors when /proc/self/fd would not open, and
// /proc/self/fd's and the working directory's when file handles failed.
func TestNewFailsWithoutLeaks(t *testing.T) {
	root := t.TempDir()
	procFd, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(procFd)
	newFails := func(t *testing.T, cfg Config) {
		t.Helper()
		before := fdCount(t)
		fs, err := New(cfg)
		require.Error(t, err)
		require.Nil(t, fs)
		require.Equal(t, before, fdCount(t), "descriptors left open by a failed New (%v)", err)
	}
	t.Run("xattr map", func(t *testing.T) {
		newFails(t, Config{Root: root, XattrMap: ":bad"})
	})
	// procfs gives no file handles: New fails after opening the shared
	// directory, the working directory and /proc/self/fd.
	t.Run("mandatory file handles", func(t *testing.T) {
		newFails(t, Config{Root: "/proc", InodeFileHandles: FileHandlesMandatory})
	})
	t.Run("mandatory file handles, ProcSelfFd given", func(t *testing.T) {
		newFails(t, Config{Root: "/proc", InodeFileHandles: FileHandlesMandatory, ProcSelfFd: procFd})
		var st unix.Stat_t
		require.NoError(t, unix.Fstat(procFd, &st), "New closed the caller's /proc/self/fd")
	})
	t.Run("no /proc/self/fd", func(t *testing.T) {
		requireRoot(t)
		// On a thread whose mount namespace has an empty /proc; the
		// descriptors are counted from the others.
		before := fdCount(t)
		var newErr error
		inMountNamespace(t, func() error {
			if err := unix.Mount("tmpfs", "/proc", "tmpfs", 0, "size=1m"); err != nil {
				return fmt.Errorf("skip: mount tmpfs on /proc: %w", err)
			}
			_, newErr = New(Config{Root: root})
			return nil
		})
		require.ErrorContains(t, newErr, "/proc/self/fd")
		require.Equal(t, before, fdCount(t), "descriptors left open by a failed New (%v)", newErr)
	})
	// A New that fails at its last step (its supplementary groups) undoes
	// everything before it, file handles and their mount included.
	t.Run("undo after every step", func(t *testing.T) {
		requireRoot(t)
		before := fdCount(t)
		fs, err := New(Config{Root: root, InodeFileHandles: FileHandlesPrefer})
		require.NoError(t, err)
		requireHandles(t, fs, FileHandlesPrefer)
		require.Equal(t, 1, fs.mounts.count())
		require.Greater(t, fdCount(t), before+3, "the shared directory, the working directory, /proc/self/fd, its mount")
		fs.undoNew(node(t, fs, RootID).fd)
		require.Equal(t, before, fdCount(t))
	})
}
