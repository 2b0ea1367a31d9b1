// Package passthrough serves FUSE requests from a directory on the host,
// the way virtiofsd does: each node id holds an O_PATH descriptor of a host
// inode or (with InodeFileHandles) its file handle, files are opened by
// re-opening that descriptor through /proc/self/fd or by opening the
// handle, names are resolved one component at a time beneath their parent,
// and requests that create files run with the caller's uid and gid.
//
// It is the bottom of the data path and knows nothing of rings or sockets.
// It trusts nothing it is given: node ids and handles are looked up in its
// own tables, names are single components, and only regular files and
// directories are ever opened, so no request reaches outside the shared
// directory or opens a device or fifo through it.
package passthrough

import (
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// CachePolicy is virtiofsd's --cache.
type CachePolicy int

// Cache policies.
const (
	CacheAuto CachePolicy = iota
	CacheNever
	CacheMetadata
	CacheAlways
)

// ParseCachePolicy accepts virtiofsd's names (and "none" for never).
func ParseCachePolicy(s string) (CachePolicy, error) {
	switch s {
	case "auto":
		return CacheAuto, nil
	case "never", "none":
		return CacheNever, nil
	case "metadata":
		return CacheMetadata, nil
	case "always":
		return CacheAlways, nil
	}
	return 0, fmt.Errorf("invalid cache policy %q (want auto, always, never or metadata)", s)
}

// String returns the policy's virtiofsd name.
func (c CachePolicy) String() string {
	return [...]string{"auto", "never", "metadata", "always"}[c]
}

// Config configures a passthrough filesystem.
type Config struct {
	Root            string      // the shared directory
	Cache           CachePolicy // virtiofsd --cache
	Readdirplus     bool        // offer READDIRPLUS (cache never turns it off)
	Writeback       bool        // offer WRITEBACK_CACHE (virtiofsd --writeback)
	AllowDirectIO   bool        // pass the guest's O_DIRECT on (virtiofsd --allow-direct-io)
	PreserveNoatime bool        // pass the guest's O_NOATIME on (virtiofsd --preserve-noatime)
	// AllowMmap lets the guest mmap files opened with DIRECT_IO (cache
	// never or metadata).
	AllowMmap         bool
	AnnounceSubmounts bool // offer SUBMOUNTS and mark the roots of submounts (ATTR_SUBMOUNT)
	// Xattr serves extended attributes (virtiofsd --xattr). Without it,
	// or one of the options below that imply it, every xattr request is
	// answered ENOSYS, which the guest takes as "never ask again".
	Xattr bool
	// PosixACL (virtiofsd --posix-acl; implies Xattr) offers POSIX_ACL,
	// DONT_MASK and SETXATTR_EXT: the guest enforces ACLs, the host stores
	// them in system.posix_acl_* and applies default ACLs (and the guest's
	// umask) when creating files. Without it, or when the guest does not
	// take POSIX_ACL, system.posix_acl_access and _default are refused
	// (EOPNOTSUPP) and hidden from listings.
	PosixACL bool
	// XattrMap is a virtiofsd --xattrmap rule list translating xattr names
	// between guest and host ("" for none; implies Xattr). See XattrMap;
	// New fails on a malformed map.
	XattrMap string
	// SecurityLabel (virtiofsd --security-label; implies Xattr) offers
	// SECURITY_CTX, with which the guest sends the new node's security
	// context (e.g. security.selinux) along with each request that
	// creates one; MkdirExt, MknodExt, SymlinkExt and CreateExt set it as
	// an xattr (through the xattr map) on what they create.
	SecurityLabel bool
	// KillprivV2 (virtiofsd --killpriv-v2) offers HANDLE_KILLPRIV_V2: the
	// guest leaves clearing setuid/setgid bits and file capabilities on
	// write, truncate and chown to the host.
	KillprivV2 bool
	Readonly   bool // refuse every request that would change the share (EROFS)
	// ProcSelfFd, when not zero, is an open O_PATH descriptor of
	// /proc/self/fd to use (a sandbox opens it before /proc goes out of
	// reach); otherwise New opens one.
	ProcSelfFd int
	// InodeFileHandles (virtiofsd --inode-file-handles) holds inodes by
	// file handles instead of O_PATH descriptors, so that the daemon's
	// descriptors do not grow with the number of inodes the guest knows.
	// It needs CAP_DAC_READ_SEARCH; see filehandle.go and FS.FileHandles.
	InodeFileHandles InodeFileHandles
	// HandleCacheSize is how many O_PATH descriptors of recently used
	// handle-backed inodes stay open (0: DefaultHandleCacheSize;
	// negative: none).
	HandleCacheSize int
	// UIDMap and GIDMap translate user and group ids between guest and
	// host (virtiofsd --translate-uid and --translate-gid; see
	// translate.go): the caller's ids and the owner a SETATTR sets go
	// guest to host, the owner in attribute replies host to guest. Nil
	// translates nothing.
	UIDMap, GIDMap *IDMap
	// MaxHandles bounds the files and directories the guest may hold open
	// at once (0: DefaultMaxHandles); past it OPEN, OPENDIR and CREATE
	// fail with EMFILE (bounds.go).
	MaxHandles int
	// MaxInodes bounds the inodes the guest may know at once (0:
	// DefaultMaxInodes); past it a lookup of a new one fails with ENFILE.
	MaxInodes int
	// LocalPosixLocks and LocalFlock keep POSIX locks and flock in the
	// guest, as virtiofsd does (-o no_posix_lock, -o no_flock): by
	// default both are taken on the host (locks.go).
	LocalPosixLocks, LocalFlock bool
	// Logf, when set, tells the operator what the guest is refused past a
	// bound (rate-limited).
	Logf func(format string, args ...any)
}

// FS is a passthrough fuse.FileSystem.
type FS struct {
	cfg       Config
	inodes    *inodeStore
	openFiles *openFileTable
	procFd    int // /proc/self/fd

	xmap    *XattrMap // nil without --xattrmap
	capName []byte    // host name of a remapped security.capability, NUL-terminated; nil if not remapped
	cwdFd   int       // the process's working directory, restored after /proc/self/fd xattr calls

	fileHandleMode InodeFileHandles // in force
	fileHandleNote string           // why file handles are off or limited, if they are
	fdc            *fdCache         // descriptors of handle-backed inodes
	flushNeeds     flushNeeds       // per mount: may closing a descriptor report an error?
	mounts         mountTable

	flags       atomic.Uint64 // negotiated at INIT
	timeout     uint64        // entry and attribute validity, seconds
	switchCreds bool
	euid, egid  uint32
	groups      []uint32 // the daemon's supplementary groups (suppgroup.go)

	keptDirs     atomic.Int64 // directories keeping a buffer between READDIRs (dir.go)
	maxOpenFiles int          // Config.MaxHandles in force
	maxInodes    int          // Config.MaxInodes in force
	openFileNote boundNote
	inodeNote    boundNote
	locks        *lockTable // locks.go
}

// New opens the shared directory and /proc/self/fd.
func New(cfg Config) (*FS, error) {
	fs := &FS{cfg: cfg, inodes: newInodeStore(), openFiles: newOpenFileTable(), procFd: -1, cwdFd: -1}
	fs.locks = newLockTable(fs, !cfg.LocalPosixLocks, !cfg.LocalFlock)
	// As in os/exec's Cmd.Start, a start that fails part way is undone in
	// one place: the steps below only open, and return on error; the
	// deferred undo closes what they opened unless New got to the end.
	rootFd := -1
	started := false
	defer func() {
		if !started {
			fs.undoNew(rootFd)
		}
	}()
	fd, err := unix.Open(cfg.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open shared directory %s: %w", cfg.Root, err)
	}
	rootFd = fd
	var st unix.Statx_t
	if e := fstatx(rootFd, &st); e != 0 {
		return nil, fmt.Errorf("stat shared directory %s: %w", cfg.Root, e)
	}
	fs.inodes.setRoot(keyOf(&st), rootFd, uint32(st.Mode))
	if err := fs.initXattr(); err != nil {
		return nil, err
	}
	if cfg.ProcSelfFd > 0 {
		fs.procFd = cfg.ProcSelfFd
	} else {
		fd, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open /proc/self/fd (is /proc mounted?): %w", err)
		}
		fs.procFd = fd
	}
	if err := fs.initFileHandles(rootFd); err != nil {
		return nil, err
	}
	switch cfg.Cache {
	case CacheNever:
		fs.timeout = 0
	case CacheAuto:
		fs.timeout = 1
	default:
		fs.timeout = 86400
	}
	fs.euid, fs.egid = uint32(unix.Geteuid()), uint32(unix.Getegid())
	fs.switchCreds = fs.euid == 0
	if err := fs.initGroups(); err != nil {
		return nil, err
	}
	fs.maxOpenFiles = cfg.MaxHandles
	if fs.maxOpenFiles <= 0 {
		fs.maxOpenFiles = DefaultMaxHandles
	}
	fs.maxInodes = cfg.MaxInodes
	if fs.maxInodes <= 0 {
		fs.maxInodes = DefaultMaxInodes
	}
	clearProcessUmask()
	started = true
	return fs, nil
}

// undoNew closes what a New that failed part way opened: the shared
// directory's descriptor rootFd (-1 if not opened), the working
// directory's (initXattr), /proc/self/fd unless it is Config.ProcSelfFd,
// which stays the caller's, and the mounts' descriptors (initFileHandles).
func (fs *FS) undoNew(rootFd int) {
	for _, fd := range []int{rootFd, fs.cwdFd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if fs.procFd >= 0 && fs.procFd != fs.cfg.ProcSelfFd {
		unix.Close(fs.procFd)
	}
	fs.mounts.closeAll()
}

// Capabilities returns the INIT flags this filesystem can honour.
func (fs *FS) Capabilities() uint64 {
	c := uint64(gofuse.CAP_ASYNC_READ | gofuse.CAP_PARALLEL_DIROPS | gofuse.CAP_BIG_WRITES |
		gofuse.CAP_ATOMIC_O_TRUNC | gofuse.CAP_ASYNC_DIO | gofuse.CAP_MAX_PAGES | gofuse.CAP_INIT_EXT |
		gofuse.CAP_AUTO_INVAL_DATA)
	if fs.cfg.Readdirplus && fs.cfg.Cache != CacheNever {
		c |= gofuse.CAP_READDIRPLUS | gofuse.CAP_READDIRPLUS_AUTO
	}
	if fs.cfg.Writeback {
		c |= gofuse.CAP_WRITEBACK_CACHE
	}
	if fs.cfg.AnnounceSubmounts {
		c |= gofuse.CAP_SUBMOUNTS
	}
	if fs.cfg.AllowMmap {
		c |= gofuse.CAP_DIRECT_IO_ALLOW_MMAP
	}
	if fs.cfg.PosixACL {
		c |= gofuse.CAP_POSIX_ACL | gofuse.CAP_DONT_MASK | gofuse.CAP_SETXATTR_EXT
	}
	if fs.cfg.KillprivV2 {
		c |= gofuse.CAP_HANDLE_KILLPRIV_V2
	}
	if fs.cfg.SecurityLabel {
		c |= gofuse.CAP_SECURITY_CTX
	}
	// As virtiofsd: the guest names the supplementary group a creation
	// needs (see suppgroup.go).
	c |= gofuse.CAP_CREATE_SUPP_GROUP
	return c
}

// Counts reports how many inodes and open files and directories (FUSE
// handles) the tables hold.
func (fs *FS) Counts() (inodes, handles int) { return fs.inodes.count(), fs.openFiles.count() }

// Init implements fuse.FileSystem.
func (fs *FS) Init(info fuse.InitInfo) { fs.flags.Store(info.Flags) }

// Destroy implements fuse.FileSystem.
func (fs *FS) Destroy() {
	fs.locks.reset() // before the open files: a flock wait holds its handle
	fs.openFiles.clear()
	fs.inodes.clear()
	if fs.fdc != nil {
		fs.fdc.flush()
	}
}

func (fs *FS) inode(id uint64) (*inode, syscall.Errno) {
	i := fs.inodes.get(id)
	if i == nil {
		return nil, syscall.EBADF
	}
	return i, 0
}

// fillAttr converts statx output into FUSE attributes, the owner
// translated for the guest.
func (fs *FS) fillAttr(a *gofuse.Attr, st *unix.Statx_t) {
	a.Ino = st.Ino
	a.Size = st.Size
	a.Blocks = st.Blocks
	a.Atime, a.Atimensec = uint64(st.Atime.Sec), st.Atime.Nsec
	a.Mtime, a.Mtimensec = uint64(st.Mtime.Sec), st.Mtime.Nsec
	a.Ctime, a.Ctimensec = uint64(st.Ctime.Sec), st.Ctime.Nsec
	a.Mode = uint32(st.Mode)
	a.Nlink = st.Nlink
	a.Uid, a.Gid = fs.guestIDs(st.Uid, st.Gid)
	// The guest decodes rdev in the kernel's 32-bit "new" encoding.
	a.Rdev = st.Rdev_minor&0xff | st.Rdev_major<<8 | (st.Rdev_minor&^0xff)<<12
	a.Blksize = st.Blksize
	a.Flags = 0
}

func (fs *FS) setTimeouts(e *gofuse.EntryOut) {
	e.EntryValid, e.AttrValid = fs.timeout, fs.timeout
	e.EntryValidNsec, e.AttrValidNsec = 0, 0
}

// Lookup implements fuse.FileSystem.
func (fs *FS) Lookup(h *gofuse.InHeader, name fuse.Name, out *gofuse.EntryOut) syscall.Errno {
	p, pf, e := fs.dirFd(h.NodeId)
	if e != 0 {
		return e
	}
	defer p.put()
	defer pf.put()
	return fs.lookup(p, pf.fd, name, out)
}

// nodeFd returns the inode of nodeID and its O_PATH descriptor; the caller
// puts both. check, if not nil, vets the inode before its descriptor is got
// (which, for a handle-backed inode, opens its handle): an error it returns
// fails the request. An unknown node id fails with EBADF, a handle-backed
// inode deleted on the host with ESTALE.
func (fs *FS) nodeFd(nodeID uint64, check func(*inode) syscall.Errno) (*inode, pathFd, syscall.Errno) {
	i, e := fs.inode(nodeID)
	if e != 0 {
		return nil, pathFd{fd: -1}, e
	}
	if check != nil {
		if e := check(i); e != 0 {
			i.put()
			return nil, pathFd{fd: -1}, e
		}
	}
	pf, e := fs.pathFd(i)
	if e != 0 {
		i.put()
		return nil, pf, e
	}
	return i, pf, 0
}

// dirFd returns directory nodeID, for a request on a name in it, and its
// O_PATH descriptor; the caller puts both.
func (fs *FS) dirFd(nodeID uint64) (*inode, pathFd, syscall.Errno) {
	return fs.nodeFd(nodeID, isDirectory)
}

// isDirectory is dirFd's check: ENOTDIR for anything but a directory.
func isDirectory(i *inode) syscall.Errno {
	if !i.isDir() {
		return syscall.ENOTDIR
	}
	return 0
}

// lookup resolves name beneath p (whose descriptor pfd is) and adds a
// guest reference to the result.
func (fs *FS) lookup(p *inode, pfd int, name fuse.Name, out *gofuse.EntryOut) syscall.Errno {
	i, e := fs.lookupName(p, pfd, name, out, false)
	if e == 0 {
		i.put()
	}
	return e
}

// lookupName is lookup; it also returns the inode, with a use reference
// for the caller to put, taken with the guest reference (so the inode
// outlives a FORGET of out.NodeId that races the request). openFirst is
// for a name the request has just made. Such a name is most likely a new
// inode, so it is opened at once rather than first asked for by name
// (which pays off for names looked up again).
func (fs *FS) lookupName(p *inode, pfd int, name fuse.Name, out *gofuse.EntryOut, openFirst bool) (*inode, syscall.Errno) {
	if !p.isDir() {
		return nil, syscall.ENOTDIR
	}
	var st unix.Statx_t
	fd := -1
	if openFirst {
		var e syscall.Errno
		if fd, e = openEntry(pfd, name, &st); e != 0 {
			return nil, e
		}
	} else if e := sysStatx(pfd, name.CString(), unix.AT_SYMLINK_NOFOLLOW, &st); e != 0 {
		return nil, e
	}
	i := fs.inodes.ref(keyOf(&st))
	if i != nil && i.fileHandle != nil && !i.mnt.cache.holds(i) && !sameFileHandle(pfd, name, i) {
		// Not the file the node id was given for: that one went and
		// its inode number was reused. (A cached descriptor keeps the
		// inode, and so its number, from going.)
		fs.inodes.forget(i.id, 1)
		i.put()
		i = nil
	}
	if i != nil && fd >= 0 {
		unix.Close(fd)
	}
	if i == nil {
		var e syscall.Errno
		if fd < 0 {
			if fd, e = openEntry(pfd, name, &st); e != 0 {
				return nil, e
			}
		}
		if i, e = fs.newInode(fd, &st); e != 0 {
			return nil, e
		}
	}
	out.NodeId, out.Generation = i.id, 0
	fs.setTimeouts(out)
	fs.fillAttr(&out.Attr, &st)
	if i.isDir() && (i.key.mnt != p.key.mnt || i.key.dev != p.key.dev) && fs.flags.Load()&gofuse.CAP_SUBMOUNTS != 0 {
		out.Attr.Flags |= gofuse.ATTR_SUBMOUNT
	}
	return i, 0
}

// openEntry opens name in the directory pfd as an O_PATH descriptor and
// stats it into st.
func openEntry(pfd int, name fuse.Name, st *unix.Statx_t) (int, syscall.Errno) {
	fd, e := sysOpenat2(pfd, name.CString(), unix.O_PATH|unix.O_NOFOLLOW, 0)
	if e != 0 {
		return -1, e
	}
	if e := fstatx(fd, st); e != 0 {
		unix.Close(fd)
		return -1, e
	}
	return fd, 0
}

// Forget implements fuse.FileSystem.
func (fs *FS) Forget(nodeID, nlookup uint64) { fs.inodes.forget(nodeID, nlookup) }

func (fs *FS) stat(i *inode, out *gofuse.AttrOut) syscall.Errno {
	pf, e := fs.pathFd(i)
	if e != 0 {
		return e
	}
	e = fs.statFd(pf.fd, out)
	pf.put()
	return e
}

func (fs *FS) statFd(fd int, out *gofuse.AttrOut) syscall.Errno {
	var st unix.Statx_t
	if e := fstatx(fd, &st); e != 0 {
		return e
	}
	out.AttrValid, out.AttrValidNsec = fs.timeout, 0
	fs.fillAttr(&out.Attr, &st)
	return 0
}

// GetAttr implements fuse.FileSystem.
func (fs *FS) GetAttr(in *gofuse.GetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	i, e := fs.inode(in.NodeId)
	if e != 0 {
		return e
	}
	defer i.put()
	if in.Flags()&gofuse.FUSE_GETATTR_FH != 0 {
		// fstat of an open file: its descriptor serves, even when the
		// file is gone from the host and its handle opens no more.
		f, e := fs.openFile(in.NodeId, in.Fh(), anyOpen)
		if e != 0 {
			return e
		}
		defer f.put()
		return fs.statFd(f.fd, out)
	}
	return fs.stat(i, out)
}

// SetAttr implements fuse.FileSystem: it sets what in.Valid names, in the
// order mode, owner, size, times (each set by a function of its own), and
// replies with the attributes after.
func (fs *FS) SetAttr(in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	var f *openFile // the open file FATTR_FH names
	i, pf, e := fs.nodeFd(in.NodeId, func(i *inode) syscall.Errno {
		if in.Valid&gofuse.FATTR_FH != 0 {
			var e syscall.Errno
			f, e = fs.openFile(in.NodeId, in.Fh, anyOpen)
			return e
		}
		return 0
	})
	if f != nil {
		defer f.put()
	}
	if e != 0 {
		return e
	}
	defer i.put()
	defer pf.put()
	if in.Valid&gofuse.FATTR_MODE != 0 {
		if e := fs.setMode(i, pf.fd, in.Mode); e != 0 {
			return e
		}
	}
	if in.Valid&(gofuse.FATTR_UID|gofuse.FATTR_GID) != 0 {
		if e := fs.setOwner(i, pf.fd, in); e != 0 {
			return e
		}
	}
	if in.Valid&gofuse.FATTR_SIZE != 0 {
		if e := fs.setSize(i, f, in); e != 0 {
			return e
		}
	}
	if in.Valid&(gofuse.FATTR_ATIME|gofuse.FATTR_MTIME) != 0 {
		if e := fs.setTimes(i, f, pf.fd, in); e != 0 {
			return e
		}
	}
	return fs.statFd(pf.fd, out)
}

// setMode sets the permission bits of inode i, whose O_PATH descriptor fd
// is, through its /proc/self/fd name. A symlink has none.
func (fs *FS) setMode(i *inode, fd int, mode uint32) syscall.Errno {
	if i.isLnk() {
		return syscall.EOPNOTSUPP
	}
	var pn [24]byte
	return sysFchmodat(fs.procFd, procName(&pn, fd), mode&07777)
}

// setOwner sets the owner and group of inode i (O_PATH descriptor fd) that
// in names, translated to host ids, and drops a remapped
// security.capability first, as the host kernel drops its own on chown.
func (fs *FS) setOwner(i *inode, fd int, in *gofuse.SetAttrIn) syscall.Errno {
	uid, gid := -1, -1
	if in.Valid&gofuse.FATTR_UID != 0 {
		hu, ok := fs.cfg.UIDMap.ToHost(in.Uid)
		if !ok {
			return errForbiddenID
		}
		uid = int(hu)
	}
	if in.Valid&gofuse.FATTR_GID != 0 {
		hg, ok := fs.cfg.GIDMap.ToHost(in.Gid)
		if !ok {
			return errForbiddenID
		}
		gid = int(hg)
	}
	if e := fs.clearCapXattrInode(i); e != 0 {
		return e
	}
	return sysFchownat(fd, &emptyPath[0], uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

// setSize truncates regular file i to in.Size, through the open file f
// when the guest named one (and it is not a directory), else through a
// descriptor opened for it (through the gate); without CAP_FSETID when in
// asks for setuid and setgid bits to go.
func (fs *FS) setSize(i *inode, f *openFile, in *gofuse.SetAttrIn) syscall.Errno {
	if !i.isReg() {
		if i.isDir() {
			return syscall.EISDIR
		}
		return syscall.EINVAL
	}
	fd := -1
	if f != nil && f.dir == nil {
		fd = f.fd
	} else {
		var e syscall.Errno
		if fd, e = fs.openInode(i, regular, unix.O_WRONLY); e != 0 {
			return e
		}
		defer unix.Close(fd)
	}
	if e := fs.clearCapXattr(fd); e != 0 {
		return e
	}
	return fs.truncate(fd, int64(in.Size), in.Valid&gofuse.FATTR_KILL_SUIDGID != 0)
}

// setTimes sets the access and modification times in names (a time not
// named is left alone) on inode i: through the open file f when the guest
// named one, on a symlink itself through its O_PATH descriptor fd, else
// through fd's /proc/self/fd name.
func (fs *FS) setTimes(i *inode, f *openFile, fd int, in *gofuse.SetAttrIn) syscall.Errno {
	ts := [2]unix.Timespec{
		setTime(in.Valid, gofuse.FATTR_ATIME, gofuse.FATTR_ATIME_NOW, in.Atime, in.Atimensec),
		setTime(in.Valid, gofuse.FATTR_MTIME, gofuse.FATTR_MTIME_NOW, in.Mtime, in.Mtimensec),
	}
	switch {
	case f != nil:
		return sysUtimensat(f.fd, nil, &ts, 0)
	case i.isLnk():
		return sysUtimensat(fd, &emptyPath[0], &ts, unix.AT_EMPTY_PATH)
	}
	var pn [24]byte
	return sysUtimensat(fs.procFd, procName(&pn, fd), &ts, 0)
}

// setTime returns the utimensat time for one of SETATTR's times: left
// alone unless valid has the bit set, now when it has now, else sec, nsec.
func setTime(valid, set, now uint32, sec uint64, nsec uint32) unix.Timespec {
	switch {
	case valid&set == 0:
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	case valid&now != 0:
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	return unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
}

// Readlink implements fuse.FileSystem.
func (fs *FS) Readlink(h *gofuse.InHeader, buf []byte) (int, syscall.Errno) {
	i, pf, e := fs.nodeFd(h.NodeId, func(i *inode) syscall.Errno {
		if !i.isLnk() {
			return syscall.EINVAL
		}
		return 0
	})
	if e != 0 {
		return 0, e
	}
	defer i.put()
	defer pf.put()
	n, e := sysReadlinkat(pf.fd, &emptyPath[0], buf)
	if e == 0 && n >= len(buf) {
		// The target may have been cut short: never hand out a prefix.
		return 0, syscall.ENAMETOOLONG
	}
	return n, e
}

// truncate sets fd's size, without CAP_FSETID when kill.
func (fs *FS) truncate(fd int, size int64, kill bool) syscall.Errno {
	var g guard
	defer g.end(fs)
	if e := fs.killprivDrop(kill, &g); e != 0 {
		return e
	}
	return errnoOf(unix.Ftruncate(fd, size))
}

// makeAs runs mk(pfd) as the caller of h (with the supplementary group of
// ext, if any) and, when withUmask, the thread's umask umask: the guard
// keeps the goroutine on its thread until they are put back.
func (fs *FS) makeAs(h *gofuse.InHeader, pfd int, umask uint32, withUmask bool, ext *fuse.Extensions, mk func(pfd int) syscall.Errno) syscall.Errno {
	var g guard
	defer g.end(fs)
	if e := fs.asCallerExt(&g, h.Uid, h.Gid, ext); e != 0 {
		return e
	}
	if withUmask {
		if e := g.setUmask(umask); e != 0 {
			return e
		}
	}
	return mk(pfd)
}

// create runs mk as the caller (with the supplementary group of ext, if
// any), in parent p, then looks the new entry up. With withUmask the
// thread's umask is umask while mk runs (see createMode). The security
// context of ext, if any, goes on the new entry, a directory when dir.
func (fs *FS) create(h *gofuse.InHeader, name fuse.Name, umask uint32, withUmask bool, ext *fuse.Extensions, dir bool, out *gofuse.EntryOut, mk func(pfd int) syscall.Errno) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	p, pf, e := fs.dirFd(h.NodeId)
	if e != 0 {
		return e
	}
	defer p.put()
	defer pf.put()
	if e := fs.makeAs(h, pf.fd, umask, withUmask, ext, mk); e != 0 {
		return e
	}
	if ext != nil && ext.SecCtxName != nil {
		if e := fs.setSecCtx(pf.fd, name, -1, ext, dir); e != 0 {
			return e
		}
	}
	var st unix.Statx_t
	made := sysStatx(pf.fd, name.CString(), unix.AT_SYMLINK_NOFOLLOW, &st) == 0
	i, e := fs.lookupName(p, pf.fd, name, out, true)
	if e != 0 {
		if made {
			// Refused after all (out of descriptors, say): leave nothing.
			removeIfSame(pf.fd, name, &st)
		}
		return e
	}
	i.put()
	return 0
}

// Mkdir implements fuse.FileSystem.
func (fs *FS) Mkdir(in *gofuse.MkdirIn, name fuse.Name, out *gofuse.EntryOut) syscall.Errno {
	return fs.MkdirExt(in, name, nil, out)
}

// MkdirExt implements fuse.ExtensionFileSystem: Mkdir for a request that
// carried extensions (nil for none). The directory is made with the
// extensions' supplementary group among the caller's groups; their
// security context (SECURITY_CTX) is set as the named xattr on it, and if
// that fails the directory is removed again.
func (fs *FS) MkdirExt(in *gofuse.MkdirIn, name fuse.Name, ext *fuse.Extensions, out *gofuse.EntryOut) syscall.Errno {
	mode, withUmask := fs.createMode(in.Mode&07777, in.Umask)
	return fs.create(&in.InHeader, name, in.Umask, withUmask, ext, true, out, func(pfd int) syscall.Errno {
		return sysMkdirat(pfd, name.CString(), mode)
	})
}

// Mknod implements fuse.FileSystem.
func (fs *FS) Mknod(in *gofuse.MknodIn, name fuse.Name, out *gofuse.EntryOut) syscall.Errno {
	return fs.MknodExt(in, name, nil, out)
}

// MknodExt implements fuse.ExtensionFileSystem (see MkdirExt).
func (fs *FS) MknodExt(in *gofuse.MknodIn, name fuse.Name, ext *fuse.Extensions, out *gofuse.EntryOut) syscall.Errno {
	mode, withUmask := fs.createMode(in.Mode, in.Umask)
	return fs.create(&in.InHeader, name, in.Umask, withUmask, ext, false, out, func(pfd int) syscall.Errno {
		rdev := uint64(in.Rdev)
		dev := unix.Mkdev(uint32((rdev&0xfff00)>>8), uint32(rdev&0xff|(rdev>>12)&0xfff00))
		return sysMknodat(pfd, name.CString(), mode, dev)
	})
}

// Symlink implements fuse.FileSystem.
func (fs *FS) Symlink(h *gofuse.InHeader, name, target fuse.Name, out *gofuse.EntryOut) syscall.Errno {
	return fs.SymlinkExt(h, name, target, nil, out)
}

// SymlinkExt implements fuse.ExtensionFileSystem (see MkdirExt).
func (fs *FS) SymlinkExt(h *gofuse.InHeader, name, target fuse.Name, ext *fuse.Extensions, out *gofuse.EntryOut) syscall.Errno {
	return fs.create(h, name, 0, false, ext, false, out, func(pfd int) syscall.Errno {
		return sysSymlinkat(target.CString(), pfd, name.CString())
	})
}

// Link implements fuse.FileSystem.
func (fs *FS) Link(in *gofuse.LinkIn, name fuse.Name, out *gofuse.EntryOut) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	i, pf, e := fs.nodeFd(in.Oldnodeid, func(i *inode) syscall.Errno {
		if i.isDir() {
			return syscall.EPERM
		}
		return 0
	})
	if e != 0 {
		return e
	}
	defer i.put()
	defer pf.put()
	p, pp, e := fs.dirFd(in.NodeId)
	if e != 0 {
		return e
	}
	defer p.put()
	defer pp.put()
	e = sysLinkat(pf.fd, &emptyPath[0], pp.fd, name.CString(), unix.AT_EMPTY_PATH)
	if e == syscall.ENOENT || e == syscall.EPERM {
		// Without CAP_DAC_READ_SEARCH, link through the magic link.
		var pn [24]byte
		e = sysLinkat(fs.procFd, procName(&pn, pf.fd), pp.fd, name.CString(), unix.AT_SYMLINK_FOLLOW)
	}
	if e != 0 {
		return e
	}
	return fs.lookup(p, pp.fd, name, out)
}

func (fs *FS) unlink(h *gofuse.InHeader, name fuse.Name, flags int) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	p, pf, e := fs.dirFd(h.NodeId)
	if e != 0 {
		return e
	}
	defer p.put()
	defer pf.put()
	return sysUnlinkat(pf.fd, name.CString(), flags)
}

// Unlink implements fuse.FileSystem.
func (fs *FS) Unlink(h *gofuse.InHeader, name fuse.Name) syscall.Errno { return fs.unlink(h, name, 0) }

// Rmdir implements fuse.FileSystem.
func (fs *FS) Rmdir(h *gofuse.InHeader, name fuse.Name) syscall.Errno {
	return fs.unlink(h, name, unix.AT_REMOVEDIR)
}

// Rename implements fuse.FileSystem.
func (fs *FS) Rename(in *gofuse.RenameIn, oldName, newName fuse.Name) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	if in.Flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE|unix.RENAME_WHITEOUT) != 0 {
		return syscall.EINVAL
	}
	op, opf, e := fs.dirFd(in.NodeId)
	if e != 0 {
		return e
	}
	defer op.put()
	defer opf.put()
	np, npf, e := fs.dirFd(in.Newdir)
	if e != 0 {
		return e
	}
	defer np.put()
	defer npf.put()
	return sysRenameat2(opf.fd, oldName.CString(), npf.fd, newName.CString(), in.Flags)
}

// Access implements fuse.FileSystem.
func (fs *FS) Access(in *gofuse.AccessIn) syscall.Errno {
	// The descriptor is got before the switch: it may need capabilities.
	i, pf, e := fs.nodeFd(in.NodeId, func(i *inode) syscall.Errno {
		if fs.cfg.Readonly && in.Mask&unix.W_OK != 0 && !i.isLnk() {
			return syscall.EROFS
		}
		return 0
	})
	if e != 0 {
		return e
	}
	defer i.put()
	defer pf.put()
	uid, gid := fs.accessIDs(in.Uid, in.Gid)
	var g guard
	defer g.end(fs)
	if e := fs.asHost(&g, uid, gid); e != 0 {
		return e
	}
	return sysFaccessat(pf.fd, &emptyPath[0], in.Mask, unix.AT_EMPTY_PATH|unix.AT_EACCESS|unix.AT_SYMLINK_NOFOLLOW)
}

// StatFs implements fuse.FileSystem.
func (fs *FS) StatFs(h *gofuse.InHeader, out *gofuse.StatfsOut) syscall.Errno {
	i, pf, e := fs.nodeFd(h.NodeId, nil)
	if e != 0 {
		return e
	}
	defer i.put()
	defer pf.put()
	var st unix.Statfs_t
	if err := unix.Fstatfs(pf.fd, &st); err != nil {
		return errnoOf(err)
	}
	out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
	out.Files, out.Ffree = st.Files, st.Ffree
	out.Bsize, out.Frsize, out.NameLen = uint32(st.Bsize), uint32(st.Frsize), uint32(st.Namelen)
	return 0
}

// SyncFs implements fuse.FileSystem.
func (fs *FS) SyncFs(h *gofuse.InHeader) syscall.Errno {
	i, e := fs.inode(h.NodeId)
	if e != 0 {
		return e
	}
	defer i.put()
	fd, e := fs.openInode(i, regular|directory, unix.O_RDONLY)
	if e != 0 {
		return e
	}
	defer unix.Close(fd)
	return errnoOf(unix.Syncfs(fd))
}
