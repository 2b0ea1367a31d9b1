package passthrough

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The tests run as root on a filesystem with user xattrs and POSIX ACLs
// (t.TempDir, normally ext4 or tmpfs); they skip where those are missing.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func requireXattrs(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, ".probe")
	require.NoError(t, os.WriteFile(p, nil, 0o644))
	defer os.Remove(p)
	if err := unix.Setxattr(p, "user.probe", []byte("x"), 0); err != nil {
		t.Skipf("no user xattrs under %s: %v", dir, err)
	}
}

func requireACLs(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, ".probe-acl")
	require.NoError(t, os.Mkdir(p, 0o755))
	defer os.Remove(p)
	if err := unix.Setxattr(p, aclDefault, acl(aclEntry{aclUserObj, 7, aclUndef}, aclEntry{aclGroupObj, 5, aclUndef}, aclEntry{aclOther, 5, aclUndef}), 0); err != nil {
		t.Skipf("no POSIX ACLs under %s: %v", dir, err)
	}
}

// Host xattr ACL encoding (linux/posix_acl_xattr.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclUndef    = 0xffffffff
)

type aclEntry struct {
	tag, perm uint16
	id        uint32
}

func acl(entries ...aclEntry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

func getX(fs *FS, node uint64, n string, dst []byte) (int, syscall.Errno) {
	h := hdr(node)
	return fs.GetXAttr(&h, name(n), dst)
}

func setX(fs *FS, node uint64, n, val string, flags uint32) syscall.Errno {
	in := gofuse.SetXAttrIn{InHeader: hdr(node), Size: uint32(len(val)), Flags: flags}
	return fs.SetXAttr(&in, name(n), []byte(val))
}

func removeX(fs *FS, node uint64, n string) syscall.Errno {
	h := hdr(node)
	return fs.RemoveXAttr(&h, name(n))
}

// listX lists node's xattrs as the guest sees them, checking that the
// size query agrees with the listing.
func listX(t *testing.T, fs *FS, node uint64) []string {
	t.Helper()
	h := hdr(node)
	size, e := fs.ListXAttr(&h, nil)
	require.Zero(t, e)
	buf := make([]byte, 64<<10)
	n, e := fs.ListXAttr(&h, buf)
	require.Zero(t, e)
	require.Equal(t, size, n, "size query and listing disagree")
	return splitNames(buf[:n])
}

func splitNames(b []byte) []string {
	var names []string
	for _, n := range bytes.Split(b, []byte{0}) {
		if len(n) > 0 {
			names = append(names, string(n))
		}
	}
	sort.Strings(names)
	return names
}

func hostList(t *testing.T, path string) []string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(path, buf)
	require.NoError(t, err)
	return splitNames(buf[:n])
}

func TestXattrDisabled(t *testing.T) {
	fs, _ := newFS(t, Config{})
	_, e := getX(fs, RootID, "user.a", nil)
	require.Equal(t, syscall.ENOSYS, e)
	h := hdr(RootID)
	_, e = fs.ListXAttr(&h, nil)
	require.Equal(t, syscall.ENOSYS, e)
	require.Equal(t, syscall.ENOSYS, setX(fs, RootID, "user.a", "v", 0))
	require.Equal(t, syscall.ENOSYS, removeX(fs, RootID, "user.a"))
}

func TestXattrRegularAndDir(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{Xattr: true})
		requireXattrs(t, root)
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
		var eo gofuse.EntryOut
		require.Zero(t, fs.Mkdir(&gofuse.MkdirIn{InHeader: hdr(RootID), Mode: 0o755}, name("d"), &eo))

		for _, tc := range []struct {
			node uint64
			path string
		}{{c.NodeId, filepath.Join(root, "f")}, {eo.NodeId, filepath.Join(root, "d")}} {
			node := tc.node
			_, e := getX(fs, node, "user.a", nil)
			require.Equal(t, syscall.ENODATA, e)
			require.Empty(t, listX(t, fs, node))

			require.Zero(t, setX(fs, node, "user.a", "hello", 0))
			require.Zero(t, setX(fs, node, "user.empty", "", 0))
			v := make([]byte, 64)
			n, err := unix.Getxattr(tc.path, "user.a", v)
			require.NoError(t, err)
			require.Equal(t, "hello", string(v[:n]))

			// Size queries, exact fits and ERANGE.
			n, e = getX(fs, node, "user.a", nil)
			require.Zero(t, e)
			require.Equal(t, 5, n)
			n, e = getX(fs, node, "user.a", v[:5])
			require.Zero(t, e)
			require.Equal(t, "hello", string(v[:n]))
			_, e = getX(fs, node, "user.a", v[:4])
			require.Equal(t, syscall.ERANGE, e)
			n, e = getX(fs, node, "user.empty", v)
			require.Zero(t, e)
			require.Zero(t, n)
			require.Equal(t, []string{"user.a", "user.empty"}, listX(t, fs, node))
			h := hdr(node)
			_, e = fs.ListXAttr(&h, v[:3])
			require.Equal(t, syscall.ERANGE, e)

			// XATTR_CREATE and XATTR_REPLACE.
			require.Equal(t, syscall.EEXIST, setX(fs, node, "user.a", "x", unix.XATTR_CREATE))
			require.Equal(t, syscall.ENODATA, setX(fs, node, "user.b", "x", unix.XATTR_REPLACE))
			require.Zero(t, setX(fs, node, "user.a", "bye", unix.XATTR_REPLACE))
			require.Zero(t, setX(fs, node, "user.b", "new", unix.XATTR_CREATE))
			require.Equal(t, syscall.EINVAL, setX(fs, node, "user.c", "x", 4))
			n, e = getX(fs, node, "user.a", v)
			require.Zero(t, e)
			require.Equal(t, "bye", string(v[:n]))

			require.Zero(t, removeX(fs, node, "user.a"))
			require.Equal(t, syscall.ENODATA, removeX(fs, node, "user.a"))
			require.Equal(t, []string{"user.b", "user.empty"}, hostList(t, tc.path))

			// trusted.* works too (the daemon is root).
			require.Zero(t, setX(fs, node, "trusted.t", "tv", 0))
			require.Contains(t, listX(t, fs, node), "trusted.t")
		}
		inodes, handles := fs.Counts()
		require.Zero(t, handles)
		require.Equal(t, 3, inodes)
	})
}

// TestXattrSymlinkAndSpecial checks that the xattrs of symlinks, fifos,
// sockets and device nodes are their own (never their target's) and that
// serving them leaves the process's working directory alone.
func TestXattrSymlinkAndSpecial(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{Xattr: true})
		requireXattrs(t, root)
		wd, err := os.Getwd()
		require.NoError(t, err)

		outside := t.TempDir()
		target := filepath.Join(outside, "target")
		require.NoError(t, os.WriteFile(target, nil, 0o644))
		require.NoError(t, unix.Setxattr(target, "user.t", []byte("target"), 0))
		require.NoError(t, unix.Setxattr(target, "trusted.t", []byte("target"), 0))
		require.NoError(t, os.Symlink(target, filepath.Join(root, "lnk")))
		require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
		require.NoError(t, unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		require.NoError(t, unix.Mknod(filepath.Join(root, "sock"), unix.S_IFSOCK|0o666, 0))

		for _, n := range []string{"lnk", "fifo", "null", "sock"} {
			eo, e := lookup(t, fs, RootID, n)
			require.Zero(t, e)
			node := eo.NodeId
			_, e = getX(fs, node, "trusted.t", nil)
			require.Equal(t, syscall.ENODATA, e, n)
			_, e = getX(fs, node, "user.t", nil)
			require.Equal(t, syscall.ENODATA, e, n)
			require.Empty(t, listX(t, fs, node), n)
			// The kernel allows user.* only on regular files and directories.
			require.Equal(t, syscall.EPERM, setX(fs, node, "user.x", "v", 0), n)

			require.Zero(t, setX(fs, node, "trusted.x", "value-"+n, 0), n)
			require.Equal(t, syscall.EEXIST, setX(fs, node, "trusted.x", "v", unix.XATTR_CREATE), n)
			v := make([]byte, 64)
			sz, e := getX(fs, node, "trusted.x", nil)
			require.Zero(t, e)
			require.Equal(t, len("value-"+n), sz)
			got, e := getX(fs, node, "trusted.x", v)
			require.Zero(t, e)
			require.Equal(t, "value-"+n, string(v[:got]))
			_, e = getX(fs, node, "trusted.x", v[:2])
			require.Equal(t, syscall.ERANGE, e)
			require.Equal(t, []string{"trusted.x"}, listX(t, fs, node), n)
			// On the host: on the node itself, not on what a symlink names.
			hn, err := unix.Lgetxattr(filepath.Join(root, n), "trusted.x", v)
			require.NoError(t, err)
			require.Equal(t, "value-"+n, string(v[:hn]))
			require.Equal(t, []string{"trusted.t", "user.t"}, hostList(t, target))

			require.Zero(t, removeX(fs, node, "trusted.x"), n)
			require.Equal(t, syscall.ENODATA, removeX(fs, node, "trusted.x"), n)
			require.Empty(t, hostList(t, filepath.Join(root, n)))
		}
		now, err := os.Getwd()
		require.NoError(t, err)
		require.Equal(t, wd, now)
		_, handles := fs.Counts()
		require.Zero(t, handles)
	})
}

func TestXattrReadonly(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		root := t.TempDir()
		requireXattrs(t, root)
		require.NoError(t, os.WriteFile(filepath.Join(root, "f"), nil, 0o644))
		require.NoError(t, unix.Setxattr(filepath.Join(root, "f"), "user.a", []byte("v"), 0))
		fs, err := New(Config{Root: root, Xattr: true, Readonly: true, InodeFileHandles: testHandles})
		require.NoError(t, err)
		fs.Init(fuse.InitInfo{Flags: fs.Capabilities()})
		t.Cleanup(fs.Destroy)
		eo, e := lookup(t, fs, RootID, "f")
		require.Zero(t, e)
		n, e := getX(fs, eo.NodeId, "user.a", nil)
		require.Zero(t, e)
		require.Equal(t, 1, n)
		require.Equal(t, []string{"user.a"}, listX(t, fs, eo.NodeId))
		require.Equal(t, syscall.EROFS, setX(fs, eo.NodeId, "user.b", "v", 0))
		require.Equal(t, syscall.EROFS, removeX(fs, eo.NodeId, "user.a"))
	})
}

// TestXattrACLNamesWithoutACLs checks that without negotiated POSIX ACLs
// the ACL xattrs are refused and hidden, as virtiofsd does.
func TestXattrACLNamesWithoutACLs(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		for _, cfg := range []Config{{Xattr: true}, {PosixACL: true}} {
			root := t.TempDir()
			requireACLs(t, root)
			cfg.Root, cfg.InodeFileHandles = root, testHandles
			fs, err := New(cfg)
			require.NoError(t, err)
			// The guest does not take POSIX_ACL.
			fs.Init(fuse.InitInfo{Flags: fs.Capabilities() &^ gofuse.CAP_POSIX_ACL})
			defer fs.Destroy()
			d := filepath.Join(root, "d")
			require.NoError(t, os.Mkdir(d, 0o755))
			def := acl(aclEntry{aclUserObj, 7, aclUndef}, aclEntry{aclGroupObj, 5, aclUndef}, aclEntry{aclOther, 5, aclUndef})
			require.NoError(t, unix.Setxattr(d, aclDefault, def, 0))
			require.NoError(t, unix.Setxattr(d, "user.a", []byte("v"), 0))
			eo, e := lookup(t, fs, RootID, "d")
			require.Zero(t, e)
			require.Equal(t, []string{"user.a"}, listX(t, fs, eo.NodeId))
			_, e = getX(fs, eo.NodeId, aclDefault, nil)
			require.Equal(t, syscall.EOPNOTSUPP, e)
			require.Equal(t, syscall.EOPNOTSUPP, setX(fs, eo.NodeId, aclAccess, string(def), 0))
			require.Equal(t, syscall.EOPNOTSUPP, removeX(fs, eo.NodeId, aclDefault))
			require.Equal(t, []string{aclDefault, "user.a"}, hostList(t, d))
		}
	})
}

func TestPosixACLCapabilities(t *testing.T) {
	fs, _ := newFS(t, Config{PosixACL: true})
	want := uint64(gofuse.CAP_POSIX_ACL | gofuse.CAP_DONT_MASK | gofuse.CAP_SETXATTR_EXT)
	require.Equal(t, want, fs.Capabilities()&want)
	fs2, _ := newFS(t, Config{Xattr: true})
	require.Zero(t, fs2.Capabilities()&want)
	// PosixACL implies Xattr.
	_, e := getX(fs, RootID, "user.nope", nil)
	require.Equal(t, syscall.ENODATA, e)
	fs3, _ := newFS(t, Config{KillprivV2: true})
	require.NotZero(t, fs3.Capabilities()&gofuse.CAP_HANDLE_KILLPRIV_V2)
	require.Zero(t, fs2.Capabilities()&gofuse.CAP_HANDLE_KILLPRIV_V2)
	// SECURITY_CTX only with SecurityLabel; CREATE_SUPP_GROUP always.
	fs4, _ := newFS(t, Config{SecurityLabel: true})
	require.NotZero(t, fs4.Capabilities()&gofuse.CAP_SECURITY_CTX)
	require.Zero(t, fs2.Capabilities()&gofuse.CAP_SECURITY_CTX)
	require.NotZero(t, fs2.Capabilities()&gofuse.CAP_CREATE_SUPP_GROUP)
}

func statMode(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st))
	return st.Mode & 0o7777
}

func currentUmask() uint32 {
	old := unix.Umask(0)
	unix.Umask(old)
	return uint32(old)
}

// TestPosixACLDefaultInheritance creates files under a directory with a
// default ACL and under one without, with the guest's umask 022: with
// DONT_MASK the umask applies only where no default ACL does.
func TestPosixACLDefaultInheritance(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{PosixACL: true})
		requireACLs(t, root)
		require.NotZero(t, fs.flags.Load()&gofuse.CAP_DONT_MASK)

		var dirs [2]gofuse.EntryOut
		for i, n := range []string{"acl", "plain"} {
			in := gofuse.MkdirIn{InHeader: hdr(RootID), Mode: 0o777, Umask: 0o022}
			require.Zero(t, fs.Mkdir(&in, name(n), &dirs[i]))
			require.EqualValues(t, 0o755, statMode(t, filepath.Join(root, n)), "umask applies without a default ACL")
		}
		// A default ACL with a named user, set through the guest's xattr call.
		def := acl(aclEntry{aclUserObj, 7, aclUndef}, aclEntry{aclUser, 7, 1000}, aclEntry{aclGroupObj, 5, aclUndef},
			aclEntry{aclMask, 7, aclUndef}, aclEntry{aclOther, 5, aclUndef})
		require.Zero(t, setX(fs, dirs[0].NodeId, aclDefault, string(def), 0))
		n, e := getX(fs, dirs[0].NodeId, aclDefault, nil)
		require.Zero(t, e)
		require.Equal(t, len(def), n)
		require.Contains(t, listX(t, fs, dirs[0].NodeId), aclDefault)

		createIn := func(parent uint64, n string, mode uint32) {
			in := gofuse.CreateIn{InHeader: hdr(parent), Flags: unix.O_RDWR, Mode: unix.S_IFREG | mode, Umask: 0o022}
			var out gofuse.CreateOut
			require.Zero(t, fs.Create(&in, name(n), &out))
			fs.Release(&gofuse.ReleaseIn{InHeader: hdr(out.NodeId), Fh: out.Fh})
		}
		createIn(dirs[0].NodeId, "f", 0o666)
		createIn(dirs[1].NodeId, "f", 0o666)
		// The default ACL replaces the umask: group bits show the mask (rw-).
		require.EqualValues(t, 0o664, statMode(t, filepath.Join(root, "acl", "f")))
		require.EqualValues(t, 0o644, statMode(t, filepath.Join(root, "plain", "f")))
		eo, e := lookup(t, fs, dirs[0].NodeId, "f")
		require.Zero(t, e)
		require.Contains(t, listX(t, fs, eo.NodeId), aclAccess)
		v := make([]byte, 256)
		n, e = getX(fs, eo.NodeId, aclAccess, v)
		require.Zero(t, e)
		require.Equal(t, acl(aclEntry{aclUserObj, 6, aclUndef}, aclEntry{aclUser, 7, 1000}, aclEntry{aclGroupObj, 5, aclUndef},
			aclEntry{aclMask, 6, aclUndef}, aclEntry{aclOther, 4, aclUndef}), v[:n])

		// Directories inherit the default ACL as theirs and as their default.
		var sub gofuse.EntryOut
		require.Zero(t, fs.Mkdir(&gofuse.MkdirIn{InHeader: hdr(dirs[0].NodeId), Mode: 0o777, Umask: 0o077}, name("sub"), &sub))
		require.EqualValues(t, 0o775, statMode(t, filepath.Join(root, "acl", "sub")))
		n, e = getX(fs, sub.NodeId, aclDefault, v)
		require.Zero(t, e)
		require.Equal(t, def, v[:n])
		// Mknod too.
		var fifo gofuse.EntryOut
		require.Zero(t, fs.Mknod(&gofuse.MknodIn{InHeader: hdr(dirs[1].NodeId), Mode: unix.S_IFIFO | 0o666, Umask: 0o027}, name("fifo"), &fifo))
		require.EqualValues(t, 0o640, statMode(t, filepath.Join(root, "plain", "fifo")))
		require.Zero(t, fs.Mknod(&gofuse.MknodIn{InHeader: hdr(dirs[0].NodeId), Mode: unix.S_IFIFO | 0o666, Umask: 0o027}, name("fifo"), &fifo))
		require.EqualValues(t, 0o664, statMode(t, filepath.Join(root, "acl", "fifo")))

		// The daemon's own umask is untouched.
		require.Zero(t, currentUmask())

		// A guest that did not take DONT_MASK applies its umask itself; the
		// mode it sends is then masked whatever the parent's ACL.
		fs.Init(fuse.InitInfo{Flags: fs.Capabilities() &^ gofuse.CAP_DONT_MASK})
		createIn(dirs[0].NodeId, "g", 0o666)
		require.EqualValues(t, 0o644, statMode(t, filepath.Join(root, "acl", "g")))
	})
}

// TestPosixACLKillSgid checks SETXATTR_ACL_KILL_SGID: setting an access
// ACL clears the setgid bit when the caller is not in the file's group.
func TestPosixACLKillSgid(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{PosixACL: true})
		requireACLs(t, root)
		access := string(acl(aclEntry{aclUserObj, 7, aclUndef}, aclEntry{aclGroupObj, 5, aclUndef}, aclEntry{aclOther, 5, aclUndef}))
		for _, tc := range []struct {
			flags uint32
			gid   uint32
			kept  bool
		}{
			{gofuse.SETXATTR_ACL_KILL_SGID, 1000, false},
			{gofuse.SETXATTR_ACL_KILL_SGID, 0, true}, // the caller is in the group
			{0, 1000, true},
		} {
			p := filepath.Join(root, "f")
			require.NoError(t, os.WriteFile(p, nil, 0o644))
			require.NoError(t, unix.Chmod(p, 0o2775))
			eo, e := lookup(t, fs, RootID, "f")
			require.Zero(t, e)
			in := gofuse.SetXAttrIn{InHeader: hdr(eo.NodeId), Size: uint32(len(access)), SetXAttrFlags: tc.flags}
			in.Gid = tc.gid
			require.Zero(t, fs.SetXAttr(&in, name(aclAccess), []byte(access)))
			want := uint32(0o755)
			if tc.kept {
				want |= unix.S_ISGID
			}
			require.EqualValues(t, want, statMode(t, p), "%+v", tc)
			fs.Forget(eo.NodeId, 1)
			require.NoError(t, os.Remove(p))
		}
	})
}

func TestXattrMapFS(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{XattrMap: ":map::user.virtiofs.:"})
		requireXattrs(t, root)
		p := filepath.Join(root, "f")
		require.NoError(t, os.WriteFile(p, nil, 0o644))
		require.NoError(t, unix.Setxattr(p, "user.host", []byte("h"), 0))
		require.NoError(t, unix.Setxattr(p, "user.virtiofs.user.guest", []byte("g"), 0))
		eo, e := lookup(t, fs, RootID, "f")
		require.Zero(t, e)
		node := eo.NodeId

		// trusted.* from the guest lands in user.virtiofs.* on the host.
		require.Zero(t, setX(fs, node, "trusted.overlay.opaque", "y", 0))
		require.Equal(t, []string{"user.host", "user.virtiofs.trusted.overlay.opaque", "user.virtiofs.user.guest"}, hostList(t, p))
		// Host names without the prefix are hidden; prefixed ones lose it.
		require.Equal(t, []string{"trusted.overlay.opaque", "user.guest"}, listX(t, fs, node))
		v := make([]byte, 64)
		n, e := getX(fs, node, "user.guest", v)
		require.Zero(t, e)
		require.Equal(t, "g", string(v[:n]))
		_, e = getX(fs, node, "user.host", nil)
		require.Equal(t, syscall.ENODATA, e)
		// Only what fits the filtered listing matters for ERANGE.
		h := hdr(node)
		n, e = fs.ListXAttr(&h, v[:len("trusted.overlay.opaque\x00user.guest\x00")])
		require.Zero(t, e)
		require.Equal(t, []string{"trusted.overlay.opaque", "user.guest"}, splitNames(v[:n]))
		_, e = fs.ListXAttr(&h, v[:10])
		require.Equal(t, syscall.ERANGE, e)
		require.Zero(t, removeX(fs, node, "trusted.overlay.opaque"))
		require.Equal(t, []string{"user.host", "user.virtiofs.user.guest"}, hostList(t, p))

		// A map with a bad rule: the guest cannot reach the prefix directly.
		fs2, root2 := newFS(t, Config{Xattr: true, XattrMap: "/map/trusted./user.virtiofs./"})
		p2 := filepath.Join(root2, "f")
		require.NoError(t, os.WriteFile(p2, nil, 0o644))
		require.NoError(t, unix.Setxattr(p2, "trusted.host", []byte("h"), 0))
		eo, e = lookup(t, fs2, RootID, "f")
		require.Zero(t, e)
		require.Equal(t, syscall.EPERM, setX(fs2, eo.NodeId, "user.virtiofs.x", "v", 0))
		require.Equal(t, syscall.EPERM, removeX(fs2, eo.NodeId, "user.virtiofs.x"))
		_, e = getX(fs2, eo.NodeId, "user.virtiofs.x", nil)
		require.Equal(t, syscall.ENODATA, e)
		require.Zero(t, setX(fs2, eo.NodeId, "trusted.g", "v", 0))
		require.Zero(t, setX(fs2, eo.NodeId, "user.u", "v", 0))
		require.Equal(t, []string{"trusted.g", "user.u"}, listX(t, fs2, eo.NodeId))
		require.Equal(t, []string{"trusted.host", "user.u", "user.virtiofs.trusted.g"}, hostList(t, p2))

		// unsupported.
		fs3, _ := newFS(t, Config{XattrMap: "/unsupported/all/security.selinux/security.selinux//ok/all///"})
		_, e = getX(fs3, RootID, "security.selinux", nil)
		require.Equal(t, syscall.EOPNOTSUPP, e)
		require.Equal(t, syscall.EOPNOTSUPP, setX(fs3, RootID, "security.selinux", "x", 0))

		// A malformed map fails New.
		_, err := New(Config{Root: t.TempDir(), XattrMap: ":prefix:client:trusted.:user.virtiofs.:"})
		require.ErrorContains(t, err, "catch-all")
	})
}

// TestXattrMapSecurityCapability checks that a remapped
// security.capability goes on write, truncation and chown, as the kernel
// would remove the real one.
func TestXattrMapSecurityCapability(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{XattrMap: ":map::user.virtiofs.:"})
		requireXattrs(t, root)
		require.Equal(t, "user.virtiofs.security.capability\x00", string(fs.capName))
		const mapped = "user.virtiofs.security.capability"
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		p := filepath.Join(root, "f")
		has := func() bool {
			_, err := unix.Getxattr(p, mapped, nil)
			return err == nil
		}
		set := func() {
			require.Zero(t, setX(fs, c.NodeId, "security.capability", "caps", 0))
			require.True(t, has())
		}
		set()
		w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 1}
		_, e := fs.Write(&w, [][]byte{[]byte("x")})
		require.Zero(t, e)
		require.False(t, has(), "write")

		set()
		var ao gofuse.AttrOut
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: hdr(c.NodeId), Valid: gofuse.FATTR_SIZE, Size: 0}}, &ao))
		require.False(t, has(), "truncate")

		set()
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: hdr(c.NodeId), Valid: gofuse.FATTR_UID, Owner: gofuse.Owner{Uid: 0}}}, &ao))
		require.False(t, has(), "chown")

		set()
		var oo gofuse.OpenOut
		require.Zero(t, fs.Open(&gofuse.OpenIn{InHeader: hdr(c.NodeId), Flags: unix.O_WRONLY | unix.O_TRUNC}, &oo))
		require.False(t, has(), "open O_TRUNC")
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: oo.Fh})

		set()
		require.Zero(t, fs.Open(&gofuse.OpenIn{InHeader: hdr(c.NodeId), Flags: unix.O_RDONLY}, &oo))
		require.True(t, has(), "a plain open keeps it")
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: oo.Fh})
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})

		// Not remapped: nothing to do.
		fs2, _ := newFS(t, Config{XattrMap: "/map/trusted./user.virtiofs./"})
		require.Nil(t, fs2.capName)
	})
}

// TestKillprivV2 checks that flagged writes, truncations and O_TRUNC opens
// clear setuid and setgid bits even though the daemon has CAP_FSETID.
func TestKillprivV2(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{KillprivV2: true})
		require.True(t, fs.killprivOn())
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		defer fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
		p := filepath.Join(root, "f")
		suid := func() { require.NoError(t, unix.Chmod(p, 0o6755)) }
		data := [][]byte{[]byte("x")}
		w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 1}

		suid()
		_, e := fs.Write(&w, data)
		require.Zero(t, e)
		require.EqualValues(t, 0o6755, statMode(t, p), "unflagged write by a privileged daemon")
		w.WriteFlags = gofuse.WRITE_KILL_SUIDGID
		_, e = fs.Write(&w, data)
		require.Zero(t, e)
		require.EqualValues(t, 0o755, statMode(t, p), "flagged write")

		suid()
		var ao gofuse.AttrOut
		sa := gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: hdr(c.NodeId), Valid: gofuse.FATTR_SIZE | gofuse.FATTR_KILL_SUIDGID, Size: 0}}
		require.Zero(t, fs.SetAttr(&sa, &ao))
		require.EqualValues(t, 0o755, statMode(t, p), "flagged truncate")

		suid()
		var oo gofuse.OpenOut
		require.Zero(t, fs.Open(&gofuse.OpenIn{InHeader: hdr(c.NodeId), Flags: unix.O_WRONLY | unix.O_TRUNC, Mode: gofuse.OPEN_KILL_SUIDGID}, &oo))
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: oo.Fh})
		require.EqualValues(t, 0o755, statMode(t, p), "flagged O_TRUNC open")

		suid()
		in := gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR | unix.O_TRUNC, Mode: 0o644, OpenFlags: gofuse.OPEN_KILL_SUIDGID}
		var co gofuse.CreateOut
		require.Zero(t, fs.Create(&in, name("f"), &co))
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
		require.EqualValues(t, 0o755, statMode(t, p), "flagged O_TRUNC create of an existing file")

		// CAP_FSETID is back afterwards.
		suid()
		w.WriteFlags = 0
		_, e = fs.Write(&w, data)
		require.Zero(t, e)
		require.EqualValues(t, 0o6755, statMode(t, p))

		// Without the option the flags mean nothing.
		fs2, root2 := newFS(t, Config{})
		c2 := create(t, fs2, RootID, "f", unix.O_RDWR)
		defer fs2.Release(&gofuse.ReleaseIn{InHeader: hdr(c2.NodeId), Fh: c2.Fh})
		require.NoError(t, unix.Chmod(filepath.Join(root2, "f"), 0o6755))
		w2 := gofuse.WriteIn{InHeader: hdr(c2.NodeId), Fh: c2.Fh, Size: 1, WriteFlags: gofuse.WRITE_KILL_SUIDGID}
		_, e = fs2.Write(&w2, data)
		require.Zero(t, e)
		require.EqualValues(t, 0o6755, statMode(t, filepath.Join(root2, "f")))
	})
}

func TestKillprivAllocations(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{KillprivV2: true})
		c := create(t, fs, RootID, "f", unix.O_RDWR)
		defer fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
		buf := make([]byte, 1)
		w := gofuse.WriteIn{InHeader: hdr(c.NodeId), Fh: c.Fh, Size: 1, WriteFlags: gofuse.WRITE_KILL_SUIDGID}
		segs := [][]byte{buf}
		require.Zero(t, testing.AllocsPerRun(100, func() { fs.Write(&w, segs) }))
		path, err := unix.BytePtrFromString(filepath.Join(root, "f"))
		require.NoError(t, err)
		require.Zero(t, testing.AllocsPerRun(100, func() {
			sysFchmodat(unix.AT_FDCWD, path, 0o6755)
			fs.Write(&w, segs)
		}))
		require.EqualValues(t, 0o755, statMode(t, filepath.Join(root, "f")))
	})
}

func TestXattrAllocations(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		// (The map leaves trusted.* alone: fifos cannot have user.* xattrs.)
		for _, cfg := range []Config{{Xattr: true}, {PosixACL: true}, {XattrMap: "/map/user./trusted.virtiofs./"}} {
			fs, root := newFS(t, cfg)
			requireXattrs(t, root)
			c := create(t, fs, RootID, "f", unix.O_RDWR)
			require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
			fifo, e := lookup(t, fs, RootID, "fifo")
			require.Zero(t, e)
			require.Zero(t, setX(fs, c.NodeId, "user.a", "value", 0))
			require.Zero(t, setX(fs, fifo.NodeId, "trusted.a", "value", 0))
			h, hf := hdr(c.NodeId), hdr(fifo.NodeId)
			nm, tnm := name("user.a"), name("trusted.a")
			val := []byte("value")
			in := gofuse.SetXAttrIn{InHeader: h, Size: uint32(len(val))}
			inf := gofuse.SetXAttrIn{InHeader: hf, Size: uint32(len(val))}
			buf := make([]byte, 4096)
			w := gofuse.WriteIn{InHeader: h, Fh: c.Fh, Size: 1}
			segs := [][]byte{buf[:1]}
			for _, tc := range []struct {
				op string
				f  func()
			}{
				{"GETXATTR", func() { fs.GetXAttr(&h, nm, buf) }},
				{"GETXATTR size", func() { fs.GetXAttr(&h, nm, nil) }},
				{"LISTXATTR", func() { fs.ListXAttr(&h, buf) }},
				{"LISTXATTR size", func() { fs.ListXAttr(&h, nil) }},
				{"SETXATTR", func() { fs.SetXAttr(&in, nm, val) }},
				{"GETXATTR fifo", func() { fs.GetXAttr(&hf, tnm, buf) }},
				{"LISTXATTR fifo", func() { fs.ListXAttr(&hf, buf) }},
				{"SETXATTR fifo", func() { fs.SetXAttr(&inf, tnm, val) }},
				{"WRITE", func() { fs.Write(&w, segs) }},
			} {
				require.Zero(t, testing.AllocsPerRun(100, tc.f), "%s %+v", tc.op, cfg)
			}
			fs.Release(&gofuse.ReleaseIn{InHeader: hdr(c.NodeId), Fh: c.Fh})
			require.True(t, strings.HasPrefix(root, os.TempDir()))
		}
	})
}

// secExt returns extensions holding the security context name=val.
func secExt(name fuse.Name, val []byte) *fuse.Extensions {
	return &fuse.Extensions{SecCtxName: name, SecCtxValue: val}
}

// TestSecCtx checks the passthrough side of SECURITY_CTX: the context
// lands on what the request created, through the xattr map, and a context
// that cannot be set undoes the create.
func TestSecCtx(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{SecurityLabel: true})
		requireXattrs(t, root)
		const label = "system_u:object_r:container_file_t:s0\x00"
		ctxName, val := name("security.selinux"), []byte(label)
		var eo gofuse.EntryOut
		require.Zero(t, fs.MkdirExt(&gofuse.MkdirIn{InHeader: hdr(RootID), Mode: 0o755}, name("d"), secExt(ctxName, val), &eo))
		require.Zero(t, fs.MknodExt(&gofuse.MknodIn{InHeader: hdr(RootID), Mode: unix.S_IFIFO | 0o644}, name("p"), secExt(ctxName, val), &eo))
		require.Zero(t, fs.SymlinkExt(&gofuse.InHeader{NodeId: RootID}, name("l"), name("d"), secExt(ctxName, val), &eo))
		var co gofuse.CreateOut
		require.Zero(t, fs.CreateExt(&gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR, Mode: 0o644}, name("f"), secExt(ctxName, val), &co))
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
		for _, n := range []string{"d", "p", "l", "f"} {
			v := make([]byte, 128)
			sz, err := unix.Lgetxattr(filepath.Join(root, n), "security.selinux", v)
			require.NoError(t, err, n)
			require.Equal(t, label, string(v[:sz]), n)
		}
		// An existing file opened by CREATE keeps its label.
		require.NoError(t, unix.Setxattr(filepath.Join(root, "f"), "security.selinux", []byte("old"), 0))
		require.Zero(t, fs.CreateExt(&gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR, Mode: 0o644}, name("f"), secExt(ctxName, val), &co))
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
		v := make([]byte, 128)
		sz, err := unix.Getxattr(filepath.Join(root, "f"), "security.selinux", v)
		require.NoError(t, err)
		require.Equal(t, "old", string(v[:sz]))
		// O_EXCL still fails on an existing name.
		require.Equal(t, syscall.EEXIST, fs.CreateExt(&gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR | unix.O_EXCL, Mode: 0o644}, name("f"), secExt(ctxName, val), &co))

		// A context that is not a security.* name undoes the create: a
		// POSIX ACL (POSIX_ACL not negotiated; SETXATTR would refuse it)
		// granting a stranger rwx on a 0700 directory, trusted.*, user.*.
		acl := []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 7, 0, 0x92, 0x10, 0, 0, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x10, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
		for k, bad := range []string{"system.posix_acl_access", "system.posix_acl_default", "trusted.x", "user.x", "security."} {
			n := fmt.Sprintf("bad%d", k)
			require.Equal(t, syscall.EINVAL, fs.MkdirExt(&gofuse.MkdirIn{InHeader: hdr(RootID), Mode: 0o700}, name(n), secExt(name(bad), acl), &eo), bad)
			_, err = os.Lstat(filepath.Join(root, n))
			require.True(t, os.IsNotExist(err), bad)
			require.Equal(t, syscall.EINVAL, fs.MknodExt(&gofuse.MknodIn{InHeader: hdr(RootID), Mode: unix.S_IFIFO | 0o644}, name(n), secExt(name(bad), acl), &eo), bad)
			_, err = os.Lstat(filepath.Join(root, n))
			require.True(t, os.IsNotExist(err), bad)
		}
		require.Equal(t, syscall.EINVAL, fs.MkdirExt(&gofuse.MkdirIn{InHeader: hdr(RootID), Mode: 0o755}, name("d2"), secExt(name(""), val), &eo))
		_, err = os.Lstat(filepath.Join(root, "d2"))
		require.True(t, os.IsNotExist(err))

		// Through the map.
		fs2, root2 := newFS(t, Config{XattrMap: ":map::user.virtiofs.:"})
		require.Zero(t, fs2.CreateExt(&gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR, Mode: 0o644}, name("f"), secExt(ctxName, val), &co))
		fs2.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
		require.Equal(t, []string{"user.virtiofs.security.selinux"}, hostList(t, filepath.Join(root2, "f")))
	})
}

func TestFilterList(t *testing.T) {
	m, err := ParseXattrMap(":map::user.virtiofs.:")
	require.NoError(t, err)
	fs := &FS{xmap: m}
	for _, tc := range []struct{ in, out string }{
		{"", ""},
		{"user.a\x00", ""},
		{"user.virtiofs.a\x00user.b\x00user.virtiofs.\x00user.virtiofs.system.posix_acl_access\x00", "a\x00"},
		{"user.virtiofs.a\x00user.virtiofs.b", "a\x00"},
		{"user.virtiofs.a", ""},
		{"\x00\x00user.virtiofs.x\x00", "x\x00"},
	} {
		b := []byte(tc.in)
		n := fs.filterList(b)
		require.Equal(t, tc.out, string(b[:n]), "%q", tc.in)
	}
	fs = &FS{cfg: Config{PosixACL: true}}
	fs.flags.Store(gofuse.CAP_POSIX_ACL)
	b := []byte("system.posix_acl_access\x00user.a\x00")
	require.Equal(t, len(b), fs.filterList(b))
	fs.flags.Store(0)
	require.Equal(t, "user.a\x00", string(b[:fs.filterList(b)]))
}

// TestXattrConcurrent runs /proc/self/fd xattr calls and umask-switching
// creates side by side, on locked threads as the workers do and on
// unlocked ones: no thread's working directory or umask may leak into
// another request.
func TestXattrConcurrent(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{PosixACL: true})
		requireXattrs(t, root)
		require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
		fifo, e := lookup(t, fs, RootID, "fifo")
		require.Zero(t, e)
		require.Zero(t, setX(fs, fifo.NodeId, "trusted.a", "v", 0))
		wd, err := os.Getwd()
		require.NoError(t, err)

		const workers, rounds = 8, 200
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			go func(w int) {
				if w%2 == 0 {
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
				}
				errs <- func() error {
					buf := make([]byte, 16)
					h := hdr(fifo.NodeId)
					for r := 0; r < rounds; r++ {
						if n, e := fs.GetXAttr(&h, name("trusted.a"), buf); e != 0 || string(buf[:n]) != "v" {
							return fmt.Errorf("getxattr: %v %q", e, buf[:n])
						}
						umask := uint32(0o022)
						if r%2 == 1 {
							umask = 0o077
						}
						n := fmt.Sprintf("f-%d-%d", w, r)
						in := gofuse.CreateIn{InHeader: hdr(RootID), Flags: unix.O_RDWR, Mode: 0o666, Umask: umask}
						var out gofuse.CreateOut
						if e := fs.Create(&in, name(n), &out); e != 0 {
							return fmt.Errorf("create: %v", e)
						}
						fs.Release(&gofuse.ReleaseIn{InHeader: hdr(out.NodeId), Fh: out.Fh})
						fs.Forget(out.NodeId, 1)
						var st unix.Stat_t
						if err := unix.Lstat(filepath.Join(root, n), &st); err != nil {
							return err
						}
						if got := st.Mode & 0o7777; got != 0o666&^umask {
							return fmt.Errorf("%s: mode %o, want %o", n, got, 0o666&^umask)
						}
					}
					return nil
				}()
			}(w)
		}
		for w := 0; w < workers; w++ {
			require.NoError(t, <-errs)
		}
		now, err := os.Getwd()
		require.NoError(t, err)
		require.Equal(t, wd, now)
		require.Zero(t, currentUmask())
	})
}
