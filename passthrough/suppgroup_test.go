package passthrough

import (
	"encoding/binary"
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

const (
	testUID, testGID = 1000, 1000
	// groupDirGID owns the directory the caller may write only as a
	// member of that group.
	groupDirGID = 2345
)

// callerHdr is a request header of the unprivileged test caller.
func callerHdr(node uint64) gofuse.InHeader {
	return gofuse.InHeader{NodeId: node, Caller: gofuse.Caller{Owner: gofuse.Owner{Uid: testUID, Gid: testGID}}}
}

// groupDir makes dir/n, owned by root:groupDirGID with mode 0770, and
// returns its node id: only root and members of groupDirGID may create in
// it.
func groupDir(t *testing.T, fs *FS, root, n string) uint64 {
	t.Helper()
	p := filepath.Join(root, n)
	require.NoError(t, os.Mkdir(p, 0o770))
	require.NoError(t, os.Chown(p, 0, groupDirGID))
	require.NoError(t, os.Chmod(p, 0o770))
	eo, e := lookup(t, fs, RootID, n)
	require.Zero(t, e)
	return eo.NodeId
}

// threadGroups returns the calling thread's supplementary groups (the
// getgroups system call reads the thread's credentials).
func threadGroups(t *testing.T) []uint32 {
	t.Helper()
	var buf [256]uint32
	n, _, e := syscall.RawSyscall(unix.SYS_GETGROUPS, uintptr(len(buf)), uintptr(unsafe.Pointer(&buf[0])), 0)
	require.Zero(t, e)
	return append([]uint32{}, buf[:n]...)
}

// createAll runs MKDIR, MKNOD, SYMLINK and CREATE of prefix-* in parent
// as the test caller with ext and returns their errnos.
func createAll(t *testing.T, fs *FS, parent uint64, prefix string, ext *fuse.Extensions) map[string]syscall.Errno {
	var eo gofuse.EntryOut
	var co gofuse.CreateOut
	res := map[string]syscall.Errno{
		"dir":  fs.MkdirExt(&gofuse.MkdirIn{InHeader: callerHdr(parent), Mode: 0o755}, name(prefix+"-dir"), ext, &eo),
		"fifo": fs.MknodExt(&gofuse.MknodIn{InHeader: callerHdr(parent), Mode: unix.S_IFIFO | 0o644}, name(prefix+"-fifo"), ext, &eo),
	}
	h := callerHdr(parent)
	res["link"] = fs.SymlinkExt(&h, name(prefix+"-link"), name("target"), ext, &eo)
	res["file"] = fs.CreateExt(&gofuse.CreateIn{InHeader: callerHdr(parent), Flags: unix.O_RDWR, Mode: 0o644}, name(prefix+"-file"), ext, &co)
	if res["file"] == 0 {
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
	}
	return res
}

// TestSuppGroup checks CREATE_SUPP_GROUP: a caller that may create in a
// directory only through a supplementary group succeeds when the request
// names that group and fails without it, and the serving thread's groups
// are the daemon's again afterwards.
func TestSuppGroup(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		requireRoot(t)
		fs, root := newFS(t, Config{})
		dir := groupDir(t, fs, root, "shared")
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		before := threadGroups(t)

		for op, e := range createAll(t, fs, dir, "plain", nil) {
			require.Equal(t, syscall.EACCES, e, "%s without the group", op)
		}
		// Some other group does not help.
		for op, e := range createAll(t, fs, dir, "other", &fuse.Extensions{SuppGroup: 999, HasSuppGroup: true}) {
			require.Equal(t, syscall.EACCES, e, "%s with another group", op)
		}
		require.Equal(t, before, threadGroups(t))

		for op, e := range createAll(t, fs, dir, "grp", &fuse.Extensions{SuppGroup: groupDirGID, HasSuppGroup: true}) {
			require.Zero(t, e, "%s with the directory's group", op)
			p := filepath.Join(root, "shared", "grp-"+op)
			var st unix.Stat_t
			require.NoError(t, unix.Lstat(p, &st), op)
			// Owned by the caller and its fsgid, not the group.
			require.Equal(t, [2]uint32{testUID, testGID}, [2]uint32{st.Uid, st.Gid}, op)
		}
		require.Equal(t, before, threadGroups(t), "groups not restored")

		// A group on a request that fails for another reason.
		var eo gofuse.EntryOut
		e := fs.MkdirExt(&gofuse.MkdirIn{InHeader: callerHdr(dir), Mode: 0o755}, name("grp-dir"), &fuse.Extensions{SuppGroup: groupDirGID, HasSuppGroup: true}, &eo)
		require.Equal(t, syscall.EEXIST, e)
		require.Equal(t, before, threadGroups(t), "groups not restored after a failure")

		// The group and a security context together.
		requireXattrs(t, root)
		ext := &fuse.Extensions{SuppGroup: groupDirGID, HasSuppGroup: true, SecCtxName: name("security.label"), SecCtxValue: []byte("both")}
		require.Zero(t, fs.MkdirExt(&gofuse.MkdirIn{InHeader: callerHdr(dir), Mode: 0o755}, name("both"), ext, &eo))
		v := make([]byte, 16)
		n, err := unix.Getxattr(filepath.Join(root, "shared", "both"), "security.label", v)
		require.NoError(t, err)
		require.Equal(t, "both", string(v[:n]))
		require.Equal(t, before, threadGroups(t))
	})
}

// --- through the fuse server, as the guest sends them ---

// wireReq encodes a request: header, arguments, then extensions, with
// total_extlen set.
func wireReq(op uint32, h gofuse.InHeader, args, ext []byte) []byte {
	b := make([]byte, int(unsafe.Sizeof(h)))
	h.Opcode = op
	h.Length = uint32(len(b) + len(args) + len(ext))
	h.TotalExtlen = uint16(len(ext) / 8)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&h)), len(b)))
	return append(append(b, args...), ext...)
}

func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// wireSecCtx is a security-context extension with one context, laid out
// as Linux does.
func wireSecCtx(n string, value []byte) []byte {
	le := binary.LittleEndian
	body := le.AppendUint32(nil, uint32(len(value)))
	body = le.AppendUint32(body, 0)
	body = append(append(append(body, n...), 0), value...)
	for len(body)%8 != 0 {
		body = append(body, 0)
	}
	hdr := le.AppendUint32(nil, uint32(8+len(body)))
	return append(le.AppendUint32(hdr, 1), body...)
}

// wireGroup is a FUSE_EXT_GROUPS extension holding gid.
func wireGroup(gid uint32) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, 16)
	b = le.AppendUint32(b, 32)
	b = le.AppendUint32(b, 1)
	return le.AppendUint32(b, gid)
}

// serve sends req to w and returns the reply's errno.
func serve(t *testing.T, w *fuse.Worker, req []byte) syscall.Errno {
	t.Helper()
	out := make([]byte, 4096)
	n := w.Serve([][]byte{req}, [][]byte{out})
	require.GreaterOrEqual(t, n, uint32(16))
	return syscall.Errno(-int32(binary.LittleEndian.Uint32(out[4:])))
}

// TestServeExtensions drives the fuse server over a passthrough FS with
// the extensions a Linux guest sends: with SecurityLabel the context
// becomes the xattr on the new node, the group lets the caller create in
// a directory of one of its supplementary groups; without SecurityLabel
// SECURITY_CTX is not offered and a context is refused.
func TestServeExtensions(t *testing.T) {
	requireRoot(t)
	for _, label := range []bool{true, false} {
		t.Run(map[bool]string{true: "security-label", false: "no-security-label"}[label], func(t *testing.T) {
			fs, root := newFS(t, Config{SecurityLabel: label})
			requireXattrs(t, root)
			srv := fuse.NewServer(fs, fuse.Config{Capabilities: fs.Capabilities()})
			w := srv.NewWorker()
			guest := uint64(gofuse.CAP_INIT_EXT | gofuse.CAP_SECURITY_CTX | gofuse.CAP_CREATE_SUPP_GROUP)
			in := gofuse.InitIn{Major: 7, Minor: 41, Flags: uint32(guest), Flags2: uint32(guest >> 32)}
			require.Zero(t, serve(t, w, wireReq(26, gofuse.InHeader{}, structBytes(&in)[int(unsafe.Sizeof(in.InHeader)):], nil)))
			require.Equal(t, label, srv.Negotiated()&gofuse.CAP_SECURITY_CTX != 0)
			require.NotZero(t, srv.Negotiated()&gofuse.CAP_CREATE_SUPP_GROUP)
			dir := groupDir(t, fs, root, "shared")

			mkdirIn := func(n string) []byte {
				a := gofuse.MkdirIn{Mode: 0o755}
				return append(structBytes(&a)[int(unsafe.Sizeof(a.InHeader)):], append([]byte(n), 0)...)
			}
			createIn := func(n string) []byte {
				a := gofuse.CreateIn{Flags: unix.O_RDWR, Mode: 0o644}
				return append(structBytes(&a)[int(unsafe.Sizeof(a.InHeader)):], append([]byte(n), 0)...)
			}
			ctx := wireSecCtx("security.label", []byte("lbl"))
			grp := wireGroup(groupDirGID)
			mkdir := uint32(9)
			create := uint32(35)

			// The group alone, whatever the label setting.
			require.Equal(t, syscall.EACCES, serve(t, w, wireReq(mkdir, callerHdr(dir), mkdirIn("nogroup"), nil)))
			require.Zero(t, serve(t, w, wireReq(mkdir, callerHdr(dir), mkdirIn("group"), grp)))
			require.DirExists(t, filepath.Join(root, "shared", "group"))

			if !label {
				require.Equal(t, syscall.EINVAL, serve(t, w, wireReq(mkdir, callerHdr(RootID), mkdirIn("ctx"), ctx)))
				require.NoDirExists(t, filepath.Join(root, "ctx"))
				return
			}
			require.Zero(t, serve(t, w, wireReq(mkdir, callerHdr(dir), mkdirIn("ctx"), append(append([]byte{}, ctx...), grp...))))
			require.Zero(t, serve(t, w, wireReq(create, callerHdr(dir), createIn("file"), append(append([]byte{}, grp...), ctx...))))
			for _, n := range []string{"ctx", "file"} {
				v := make([]byte, 16)
				sz, err := unix.Getxattr(filepath.Join(root, "shared", n), "security.label", v)
				require.NoError(t, err, n)
				require.Equal(t, "lbl", string(v[:sz]), n)
			}
			// A context that is not a security.* name leaves no fifo
			// behind.
			mknodIn := func(n string) []byte {
				a := gofuse.MknodIn{Mode: unix.S_IFIFO | 0o644}
				return append(structBytes(&a)[int(unsafe.Sizeof(a.InHeader)):], append([]byte(n), 0)...)
			}
			require.Equal(t, syscall.EINVAL, serve(t, w, wireReq(8, callerHdr(RootID), mknodIn("fifo"), wireSecCtx("user.label", []byte("lbl")))))
			_, err := os.Lstat(filepath.Join(root, "fifo"))
			require.True(t, os.IsNotExist(err))
			// A malformed context (two of them) creates nothing.
			bad := append([]byte{}, ctx...)
			bad[4] = 2
			require.Equal(t, syscall.EINVAL, serve(t, w, wireReq(mkdir, callerHdr(RootID), mkdirIn("bad"), bad)))
			require.NoDirExists(t, filepath.Join(root, "bad"))
		})
	}
}
