package passthrough

import (
	"bytes"
	"sync"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Extended attributes, as virtiofsd serves them.
//
// Regular files and directories are reopened read-only through their O_PATH
// descriptor and served with the f*xattr calls. Other inodes (symlinks,
// fifos, sockets, device nodes) are never opened: their xattrs are reached
// through the magic link /proc/self/fd/N of the O_PATH descriptor. The
// path-following calls (getxattr, not lgetxattr) are the right ones there:
// following the magic link lands on the inode the descriptor holds (the
// symlink itself, not its target) and never walks a path from the share,
// whereas lgetxattr would act on the procfs link. As /proc may be out of
// reach in the sandbox, the name is resolved relative to /proc/self/fd made
// the thread's working directory (the thread first gets a working
// directory of its own with unshare(CLONE_FS)).

const (
	xattrNameMax = 255     // XATTR_NAME_MAX
	xattrListMax = 1 << 16 // XATTR_LIST_MAX
	aclAccess    = "system.posix_acl_access"
	aclDefault   = "system.posix_acl_default"
	capXattr     = "security.capability"
	secCtxPrefix = "security."
)

// listBufs holds scratch space for listings that need filtering.
var listBufs = sync.Pool{New: func() any { return new([xattrListMax]byte) }}

// xattrTarget is an inode made ready for xattr calls: an open descriptor
// (fd >= 0), or the O_PATH descriptor ofd whose /proc/self/fd name is
// resolved relative to the thread's working directory.
type xattrTarget struct {
	fd, ofd int
	pf      pathFd // where ofd comes from
	g       guard  // the working directory, while ofd is in use
}

// xattrOpen readies inode i for xattr calls; xattrClose undoes it.
func (fs *FS) xattrOpen(i *inode, t *xattrTarget) syscall.Errno {
	if i.isReg() || i.isDir() {
		fd, e := fs.openInode(i, regular|directory, unix.O_RDONLY|unix.O_NONBLOCK)
		if e != 0 {
			return e
		}
		t.fd, t.ofd = fd, -1
		return 0
	}
	pf, e := fs.pathFd(i)
	if e != 0 {
		return e
	}
	if e := t.g.chdir(fs.procFd); e != 0 {
		t.g.end(fs) // xattrClose is not called when xattrOpen fails
		pf.put()
		return e
	}
	t.fd, t.ofd, t.pf = -1, pf.fd, pf
	return 0
}

func (fs *FS) xattrClose(t *xattrTarget) {
	if t.fd >= 0 {
		unix.Close(t.fd)
		return
	}
	// The working directory is this thread's own; the guard puts back the
	// one the process had, for whatever runs on this thread next.
	t.g.end(fs)
	t.pf.put()
}

// stat stats the target's inode.
func (t *xattrTarget) stat(st *unix.Statx_t) syscall.Errno {
	if t.fd >= 0 {
		return fstatx(t.fd, st)
	}
	return fstatx(t.ofd, st)
}

func (t *xattrTarget) get(name *byte, dst []byte) (int, syscall.Errno) {
	if t.fd >= 0 {
		return sysXattr(unix.SYS_FGETXATTR, t.fd, nil, name, dst)
	}
	var pn [24]byte
	return sysXattr(unix.SYS_GETXATTR, -1, procName(&pn, t.ofd), name, dst)
}

func (t *xattrTarget) list(dst []byte) (int, syscall.Errno) {
	if t.fd >= 0 {
		return sysXattrList(unix.SYS_FLISTXATTR, t.fd, nil, dst)
	}
	var pn [24]byte
	return sysXattrList(unix.SYS_LISTXATTR, -1, procName(&pn, t.ofd), dst)
}

func (t *xattrTarget) set(name *byte, val []byte, flags int) syscall.Errno {
	if t.fd >= 0 {
		return sysSetxattr(unix.SYS_FSETXATTR, t.fd, nil, name, val, flags)
	}
	var pn [24]byte
	return sysSetxattr(unix.SYS_SETXATTR, -1, procName(&pn, t.ofd), name, val, flags)
}

func (t *xattrTarget) remove(name *byte) syscall.Errno {
	if t.fd >= 0 {
		return sysRemovexattr(unix.SYS_FREMOVEXATTR, t.fd, nil, name)
	}
	var pn [24]byte
	return sysRemovexattr(unix.SYS_REMOVEXATTR, -1, procName(&pn, t.ofd), name)
}

// chmodTarget sets the mode bits of the target's inode.
func (fs *FS) chmodTarget(t *xattrTarget, mode uint32) syscall.Errno {
	if t.fd >= 0 {
		return errnoOf(unix.Fchmod(t.fd, mode))
	}
	var pn [24]byte
	return sysFchmodat(fs.procFd, procName(&pn, t.ofd), mode)
}

// xattrsOn reports whether xattr requests are served at all.
func (fs *FS) xattrsOn() bool {
	return fs.cfg.Xattr || fs.cfg.PosixACL || fs.cfg.SecurityLabel || fs.xmap != nil
}

// aclOn reports whether POSIX ACLs were offered and the guest took them.
func (fs *FS) aclOn() bool {
	return fs.cfg.PosixACL && fs.flags.Load()&gofuse.CAP_POSIX_ACL != 0
}

// isACLName reports whether name is one of the POSIX ACL xattrs, which are
// refused (EOPNOTSUPP) and hidden unless the guest handles ACLs: a guest
// that does not would otherwise store ACLs it never enforces.
func isACLName(name []byte) bool {
	return string(name) == aclAccess || string(name) == aclDefault
}

// hostName turns the guest's xattr name into the NUL-terminated host name
// (in buf when the map rewrote it).
func (fs *FS) hostName(name fuse.Name, buf *[xattrNameMax + 1]byte) ([]byte, *byte, syscall.Errno) {
	if !fs.aclOn() && isACLName(name) {
		return nil, nil, syscall.EOPNOTSUPP
	}
	if fs.xmap == nil {
		return name, name.CString(), 0
	}
	n, e := fs.xmap.mapClient(name, buf)
	if e != 0 {
		return nil, nil, e
	}
	return n, &buf[0], 0
}

// GetXAttr implements fuse.FileSystem.
func (fs *FS) GetXAttr(h *gofuse.InHeader, name fuse.Name, dst []byte) (int, syscall.Errno) {
	if !fs.xattrsOn() {
		return 0, syscall.ENOSYS
	}
	var buf [xattrNameMax + 1]byte
	_, hn, e := fs.hostName(name, &buf)
	if e == syscall.EPERM {
		// A name the map forbids reads as absent.
		return 0, syscall.ENODATA
	}
	if e != 0 {
		return 0, e
	}
	i, e := fs.inode(h.NodeId)
	if e != 0 {
		return 0, e
	}
	defer i.put()
	var t xattrTarget
	if e := fs.xattrOpen(i, &t); e != 0 {
		return 0, e
	}
	defer fs.xattrClose(&t)
	return t.get(hn, dst)
}

// ListXAttr implements fuse.FileSystem.
func (fs *FS) ListXAttr(h *gofuse.InHeader, dst []byte) (int, syscall.Errno) {
	if !fs.xattrsOn() {
		return 0, syscall.ENOSYS
	}
	i, e := fs.inode(h.NodeId)
	if e != 0 {
		return 0, e
	}
	defer i.put()
	var t xattrTarget
	if e := fs.xattrOpen(i, &t); e != 0 {
		return 0, e
	}
	defer fs.xattrClose(&t)
	filter := fs.xmap != nil || !fs.aclOn()
	if !filter {
		return t.list(dst)
	}
	if len(dst) > 0 {
		// Filtering only shortens the list, so try in place first.
		n, e := t.list(dst)
		if e == 0 {
			return fs.filterList(dst[:n]), 0
		}
		if e != syscall.ERANGE {
			return 0, e
		}
		// The host's list does not fit; the filtered one still may.
	}
	scratch := listBufs.Get().(*[xattrListMax]byte)
	defer listBufs.Put(scratch)
	n, e := t.list(scratch[:])
	if e != 0 {
		return 0, e
	}
	n = fs.filterList(scratch[:n])
	if len(dst) == 0 {
		return n, 0
	}
	if n > len(dst) {
		return 0, syscall.ERANGE
	}
	return copy(dst, scratch[:n]), 0
}

// filterList rewrites a host listing (NUL-terminated names) in place into
// the guest's: names mapped, hidden ones dropped. It returns the new length.
func (fs *FS) filterList(b []byte) int {
	w := 0
	for r := 0; r < len(b); {
		end := r
		for end < len(b) && b[end] != 0 {
			end++
		}
		if end == len(b) {
			break // not NUL-terminated: the kernel never does that
		}
		name := b[r:end]
		r = end + 1
		if len(name) == 0 {
			continue
		}
		show := true
		if fs.xmap != nil {
			name, show = fs.xmap.mapServer(name)
		}
		if !show || len(name) == 0 || (!fs.aclOn() && isACLName(name)) {
			continue
		}
		// name lies at or after w: copy moves it down safely.
		w += copy(b[w:], name)
		b[w] = 0
		w++
	}
	return w
}

// SetXAttr implements fuse.FileSystem.
func (fs *FS) SetXAttr(in *gofuse.SetXAttrIn, name fuse.Name, value []byte) syscall.Errno {
	if !fs.xattrsOn() {
		return syscall.ENOSYS
	}
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	if in.Flags&^(unix.XATTR_CREATE|unix.XATTR_REPLACE) != 0 {
		return syscall.EINVAL
	}
	var buf [xattrNameMax + 1]byte
	hn, hp, e := fs.hostName(name, &buf)
	if e != 0 {
		return e
	}
	i, e := fs.inode(in.NodeId)
	if e != 0 {
		return e
	}
	defer i.put()
	var t xattrTarget
	if e := fs.xattrOpen(i, &t); e != 0 {
		return e
	}
	defer fs.xattrClose(&t)
	if e := t.set(hp, value, int(in.Flags)); e != 0 {
		return e
	}
	if in.SetXAttrFlags&gofuse.SETXATTR_ACL_KILL_SGID != 0 && fs.aclOn() && string(hn) == aclAccess {
		return fs.killSgid(&t, in.Gid)
	}
	return 0
}

// killSgid clears the setgid bit after the guest set an access ACL with
// SETXATTR_ACL_KILL_SGID: the guest kernel asks for it when the caller is
// neither in the file's group nor has CAP_FSETID (what the host kernel
// would check, were the daemon not privileged). virtiofsd lets the host
// kernel decide by setting the ACL with the caller's fsuid and fsgid and
// without CAP_FSETID; the host then clears the bit when the caller's gid is
// not the file's group. This does the same after the fact: the bit goes
// when the caller's gid differs from the file's group.
func (fs *FS) killSgid(t *xattrTarget, gid uint32) syscall.Errno {
	var st unix.Statx_t
	if e := t.stat(&st); e != 0 {
		return e
	}
	if hg, ok := fs.cfg.GIDMap.ToHost(gid); st.Mode&unix.S_ISGID == 0 || (ok && st.Gid == hg) {
		return 0
	}
	return fs.chmodTarget(t, uint32(st.Mode)&07777&^unix.S_ISGID)
}

// RemoveXAttr implements fuse.FileSystem.
func (fs *FS) RemoveXAttr(h *gofuse.InHeader, name fuse.Name) syscall.Errno {
	if !fs.xattrsOn() {
		return syscall.ENOSYS
	}
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	var buf [xattrNameMax + 1]byte
	_, hp, e := fs.hostName(name, &buf)
	if e != 0 {
		return e
	}
	i, e := fs.inode(h.NodeId)
	if e != 0 {
		return e
	}
	defer i.put()
	var t xattrTarget
	if e := fs.xattrOpen(i, &t); e != 0 {
		return e
	}
	defer fs.xattrClose(&t)
	return t.remove(hp)
}

// The kernel removes security.capability from a file that is written,
// truncated or chowned. When the map moves security.capability to another
// name the host kernel no longer knows it for what it is, so the daemon
// removes it itself at those points (as virtiofsd does).

// clearCapXattr removes the remapped security.capability from the open
// file fd.
func (fs *FS) clearCapXattr(fd int) syscall.Errno {
	if fs.capName == nil {
		return 0
	}
	e := sysRemovexattr(unix.SYS_FREMOVEXATTR, fd, nil, &fs.capName[0])
	if e == syscall.ENODATA || e == syscall.EOPNOTSUPP {
		return 0
	}
	return e
}

// clearCapXattrInode removes the remapped security.capability from inode i.
func (fs *FS) clearCapXattrInode(i *inode) syscall.Errno {
	if fs.capName == nil {
		return 0
	}
	var t xattrTarget
	if e := fs.xattrOpen(i, &t); e != 0 {
		return e
	}
	defer fs.xattrClose(&t)
	e := t.remove(&fs.capName[0])
	if e == syscall.ENODATA || e == syscall.EOPNOTSUPP {
		return 0
	}
	return e
}

// With HANDLE_KILLPRIV_V2 the guest no longer clears setuid and setgid
// bits itself; it flags the requests after which an unprivileged writer's
// bits would go (WRITE_KILL_SUIDGID, OPEN_KILL_SUIDGID with O_TRUNC,
// FATTR_KILL_SUIDGID with a size change) and the host must clear them.
// As virtiofsd does, the daemon then runs the call without CAP_FSETID in its
// thread's effective set, and the host kernel clears the bits as it would
// for the guest's caller. (Chown needs nothing: the host kernel clears the
// bits on chown even for a privileged caller.)

// killprivOn reports whether HANDLE_KILLPRIV_V2 is in force.
func (fs *FS) killprivOn() bool {
	return fs.cfg.KillprivV2 && fs.flags.Load()&gofuse.CAP_HANDLE_KILLPRIV_V2 != 0
}

// setid reports whether the open file fd has a setuid or setgid bit (or
// its mode cannot be read).
func setid(fd int) bool {
	var st unix.Statx_t
	if fstatx(fd, &st) != 0 {
		return true
	}
	return st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0
}

// killprivDrop drops CAP_FSETID through g when want and HANDLE_KILLPRIV_V2
// is on, so that the write or truncation that follows clears the file's
// setuid and setgid bits as an unprivileged caller's would.
func (fs *FS) killprivDrop(want bool, g *guard) syscall.Errno {
	if !want || !fs.killprivOn() {
		return 0
	}
	return g.dropFsetid()
}

// setSecCtx sets the security context of ext (the guest sends it with
// SECURITY_CTX, e.g. security.selinux for the new file) on the entry name
// just created in the directory pfd, a directory when dir: through fd when
// the caller holds it open, else through an O_PATH descriptor (the entry
// may be a device node, which must not be opened). The name goes through
// the xattr map. If the context cannot be set, the entry is removed again
// and the error returned, so that no unlabelled file is left behind.
func (fs *FS) setSecCtx(pfd int, name fuse.Name, fd int, ext *fuse.Extensions, dir bool) syscall.Errno {
	e := fs.trySetSecCtx(pfd, name, fd, ext.SecCtxName, ext.SecCtxValue)
	if e != 0 {
		flags := 0
		if dir {
			flags = unix.AT_REMOVEDIR
		}
		sysUnlinkat(pfd, name.CString(), flags)
	}
	return e
}

func (fs *FS) trySetSecCtx(pfd int, name fuse.Name, fd int, ctxName fuse.Name, value []byte) syscall.Errno {
	if len(ctxName) == 0 || len(ctxName) > xattrNameMax {
		return syscall.EINVAL
	}
	// A security context is a security.* attribute (security.selinux,
	// security.SMACK64, ...). Any other name (a POSIX ACL, trusted.*,
	// user.*) would bypass what SETXATTR checks for it.
	if !bytes.HasPrefix(ctxName, []byte(secCtxPrefix)) || len(ctxName) == len(secCtxPrefix) {
		return syscall.EINVAL
	}
	var buf [xattrNameMax + 1]byte
	hp := ctxName.CString()
	if fs.xmap != nil {
		if _, e := fs.xmap.mapClient(ctxName, &buf); e != 0 {
			return e
		}
		hp = &buf[0]
	}
	return fs.setSecCtxName(pfd, name, fd, hp, value)
}

func (fs *FS) setSecCtxName(pfd int, name fuse.Name, fd int, hp *byte, value []byte) syscall.Errno {
	if fd >= 0 {
		return sysSetxattr(unix.SYS_FSETXATTR, fd, nil, hp, value, 0)
	}
	ofd, e := sysOpenat2(pfd, name.CString(), unix.O_PATH|unix.O_NOFOLLOW, 0)
	if e != 0 {
		return e
	}
	defer unix.Close(ofd)
	t := xattrTarget{fd: -1, ofd: ofd}
	defer t.g.end(fs)
	if e := t.g.chdir(fs.procFd); e != 0 {
		return e
	}
	return t.set(hp, value, 0)
}

// initXattr sets up what the xattr options need; New calls it.
func (fs *FS) initXattr() error {
	if fs.cfg.XattrMap != "" {
		m, err := ParseXattrMap(fs.cfg.XattrMap)
		if err != nil {
			return err
		}
		fs.xmap = m
		var buf [xattrNameMax + 1]byte
		if n, e := m.mapClient([]byte(capXattr), &buf); e == 0 && string(n) != capXattr {
			fs.capName = append([]byte(nil), buf[:len(n)+1]...)
		}
	}
	fd, err := unix.Open(".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
	}
	fs.cwdFd = fd
	return nil
}

// createMode returns the mode to create a file with and whether the
// thread's umask must be set to umask around the call. When the guest
// negotiated DONT_MASK it sends its umask unapplied, because only the host
// knows whether the parent directory has a default ACL (which replaces the
// umask); the host kernel then decides, with the thread's umask set to the
// guest's. Otherwise the guest applied its umask already (masking again is
// harmless).
func (fs *FS) createMode(mode, umask uint32) (uint32, bool) {
	if fs.flags.Load()&gofuse.CAP_DONT_MASK != 0 {
		return mode, true
	}
	return mode &^ (umask & 0o7777), false
}

// The xattr wrappers take either a path (path != nil; the path form of
// the call nr) or a descriptor (the f* form).

func sysXattr(nr uintptr, fd int, path *byte, name *byte, dst []byte) (int, syscall.Errno) {
	var p unsafe.Pointer
	if len(dst) > 0 {
		p = unsafe.Pointer(&dst[0])
	}
	var n uintptr
	var e syscall.Errno
	if path != nil {
		n, _, e = syscall.Syscall6(nr, uintptr(unsafe.Pointer(path)), uintptr(unsafe.Pointer(name)), uintptr(p), uintptr(len(dst)), 0, 0)
	} else {
		n, _, e = syscall.Syscall6(nr, uintptr(fd), uintptr(unsafe.Pointer(name)), uintptr(p), uintptr(len(dst)), 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

func sysXattrList(nr uintptr, fd int, path *byte, dst []byte) (int, syscall.Errno) {
	var p unsafe.Pointer
	if len(dst) > 0 {
		p = unsafe.Pointer(&dst[0])
	}
	var n uintptr
	var e syscall.Errno
	if path != nil {
		n, _, e = syscall.Syscall(nr, uintptr(unsafe.Pointer(path)), uintptr(p), uintptr(len(dst)))
	} else {
		n, _, e = syscall.Syscall(nr, uintptr(fd), uintptr(p), uintptr(len(dst)))
	}
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

func sysSetxattr(nr uintptr, fd int, path *byte, name *byte, val []byte, flags int) syscall.Errno {
	var p unsafe.Pointer
	if len(val) > 0 {
		p = unsafe.Pointer(&val[0])
	}
	var e syscall.Errno
	if path != nil {
		_, _, e = syscall.Syscall6(nr, uintptr(unsafe.Pointer(path)), uintptr(unsafe.Pointer(name)), uintptr(p), uintptr(len(val)), uintptr(flags), 0)
	} else {
		_, _, e = syscall.Syscall6(nr, uintptr(fd), uintptr(unsafe.Pointer(name)), uintptr(p), uintptr(len(val)), uintptr(flags), 0)
	}
	return e
}

func sysRemovexattr(nr uintptr, fd int, path *byte, name *byte) syscall.Errno {
	var e syscall.Errno
	if path != nil {
		_, _, e = syscall.Syscall(nr, uintptr(unsafe.Pointer(path)), uintptr(unsafe.Pointer(name)), 0)
	} else {
		_, _, e = syscall.Syscall(nr, uintptr(fd), uintptr(unsafe.Pointer(name)), 0)
	}
	return e
}
