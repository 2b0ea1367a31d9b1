package passthrough

import (
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ioFlags are the open flags that say how a file is read and written; an
// open file keeps only these (and a restored one, migrate.go).
const ioFlags = unix.O_ACCMODE | unix.O_SYNC | unix.O_DSYNC | unix.O_DIRECT | unix.O_NOATIME | unix.O_NONBLOCK | unix.O_LARGEFILE

// openFlags turns the guest's open flags into the host's, following the
// cache policy and options. Only ioFlags, O_TRUNC and O_EXCL pass:
// O_PATH, O_TMPFILE, O_DIRECTORY, O_CREAT and the like would change what
// the open does (O_PATH turns O_CREAT|O_EXCL off), and O_APPEND is the
// guest's to apply.
func (fs *FS) openFlags(flags uint32) int {
	f := int(flags) & (ioFlags | unix.O_TRUNC | unix.O_EXCL)
	if !fs.cfg.AllowDirectIO {
		f &^= unix.O_DIRECT
	}
	if !fs.cfg.PreserveNoatime {
		f &^= unix.O_NOATIME
	}
	if fs.flags.Load()&gofuse.CAP_WRITEBACK_CACHE != 0 && f&unix.O_ACCMODE == unix.O_WRONLY {
		// With writeback caching the guest reads pages it writes.
		f = f&^unix.O_ACCMODE | unix.O_RDWR
	}
	return f
}

func (fs *FS) fileOpenFlags() uint32 {
	switch fs.cfg.Cache {
	case CacheNever, CacheMetadata:
		return gofuse.FOPEN_DIRECT_IO
	case CacheAlways:
		return gofuse.FOPEN_KEEP_CACHE
	}
	return 0
}

func (fs *FS) dirOpenFlags() uint32 {
	switch fs.cfg.Cache {
	case CacheMetadata, CacheAlways:
		return gofuse.FOPEN_CACHE_DIR | gofuse.FOPEN_KEEP_CACHE
	}
	return 0
}

func writes(flags int) bool {
	return flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
}

// Open implements fuse.FileSystem.
func (fs *FS) Open(in *gofuse.OpenIn, out *gofuse.OpenOut) syscall.Errno {
	i, e := fs.inode(in.NodeId)
	if e != 0 {
		return e
	}
	defer i.put()
	if i.isDir() {
		return syscall.EISDIR
	}
	if e := fs.openFileRoom(); e != 0 {
		return e
	}
	flags := fs.openFlags(in.Flags)
	if fs.cfg.Readonly && writes(flags) {
		return syscall.EROFS
	}
	trunc := flags&unix.O_TRUNC != 0
	fd, e := fs.openKillpriv(i, flags, trunc && in.Mode&gofuse.OPEN_KILL_SUIDGID != 0)
	if e != 0 {
		return e
	}
	if trunc {
		if e := fs.clearCapXattr(fd); e != 0 {
			unix.Close(fd)
			return e
		}
	}
	i.refs.Add(1)
	fh, e := fs.addOpenFile(&openFile{fd: fd, ino: i, flags: uint32(flags)})
	if e != 0 {
		unix.Close(fd)
		i.put()
		return e
	}
	out.Fh = fh
	out.OpenFlags = fs.fopenFlags(fd, i, flags)
	return 0
}

// Create implements fuse.FileSystem.
func (fs *FS) Create(in *gofuse.CreateIn, name fuse.Name, out *gofuse.CreateOut) syscall.Errno {
	return fs.CreateExt(in, name, nil, out)
}

// CreateExt implements fuse.ExtensionFileSystem (see MkdirExt); the
// security context goes only on a file the request created, not on one it
// opened.
func (fs *FS) CreateExt(in *gofuse.CreateIn, name fuse.Name, ext *fuse.Extensions, out *gofuse.CreateOut) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	if e := fs.openFileRoom(); e != 0 {
		return e
	}
	p, pf, e := fs.dirFd(in.NodeId)
	if e != 0 {
		return e
	}
	defer p.put()
	defer pf.put()
	flags := fs.openFlags(in.Flags) | unix.O_CREAT | unix.O_NOFOLLOW
	mode, withUmask := fs.createMode(in.Mode, in.Umask)
	fd, created, e := fs.createFile(in, pf.fd, name, flags, mode, withUmask, ext)
	if e != 0 {
		return e
	}
	// fail undoes the request: a file it created goes again, so that a
	// refused create (out of descriptors, say) leaves nothing behind. Only
	// a file this request created goes, and only while its name still
	// holds it (removeIfSame): one that was there already, opened (and
	// perhaps truncated) by a CREATE without O_EXCL, stays, as would one
	// that replaced it meanwhile.
	fail := func(e syscall.Errno) syscall.Errno {
		var st unix.Statx_t
		if created && fstatx(fd, &st) == 0 {
			removeIfSame(pf.fd, name, &st)
		}
		unix.Close(fd)
		return e
	}
	if ext != nil && ext.SecCtxName != nil && created {
		if e := fs.setSecCtx(pf.fd, name, fd, ext, false); e != 0 {
			return fail(e)
		}
	}
	if flags&unix.O_TRUNC != 0 {
		// The name may have been an existing file, now truncated.
		if e := fs.clearCapXattr(fd); e != 0 {
			return fail(e)
		}
	}
	// The use reference on i that the lookup returns goes to the open
	// file. It was taken with the lookup, so a FORGET of the new node id
	// racing this request (a guest can guess the id before the reply
	// tells it) takes the node id away but not the inode: the request
	// then succeeds as if the FORGET had come after it (the handle
	// serves, with that node id, until released), and there is no
	// failure to undo. (It used to look the node id up again and, finding
	// it forgotten, answer EIO, leaving the created file behind.)
	i, e := fs.lookupName(p, pf.fd, name, &out.EntryOut, created)
	if e != 0 {
		return fail(e)
	}
	fh, e := fs.addOpenFile(&openFile{fd: fd, ino: i, flags: uint32(flags)})
	if e != 0 {
		i.put()
		fs.inodes.forget(out.NodeId, 1) // the guest never learns it
		return fail(e)
	}
	out.OpenOut.Fh = fh
	out.OpenOut.OpenFlags = fs.fopenFlags(fd, i, flags)
	return 0
}

// createFile opens (creating it if need be) name in the directory pfd as
// the caller (with the supplementary group of ext, if any), with the
// caller's umask when withUmask, and without CAP_FSETID when the guest
// asks for setuid/setgid bits to go on truncation. It also reports whether
// it created the file.
func (fs *FS) createFile(in *gofuse.CreateIn, pfd int, name fuse.Name, flags int, mode uint32, withUmask bool, ext *fuse.Extensions) (fd int, created bool, e syscall.Errno) {
	var g guard
	defer g.end(fs)
	if e := fs.asCallerExt(&g, in.Uid, in.Gid, ext); e != 0 {
		return -1, false, e
	}
	if e := fs.killprivDrop(flags&unix.O_TRUNC != 0 && in.OpenFlags&gofuse.OPEN_KILL_SUIDGID != 0, &g); e != 0 {
		return -1, false, e
	}
	if withUmask {
		if e := g.setUmask(in.Umask); e != 0 {
			return -1, false, e
		}
	}
	if fd, e = createNew(pfd, name, flags, mode); e != syscall.EEXIST || flags&unix.O_EXCL != 0 {
		return fd, e == 0, e
	}
	// The name exists: open what is there as OPEN would, through the
	// gate, so a device node, fifo or socket the guest made is refused.
	fd, e = fs.openName(pfd, name, regular, flags)
	return fd, false, e
}

// removeIfSame removes name from the directory dfd if it still names the
// entry described by was (a statx of it right after its creation): a
// request that created an entry and then failed takes it away again.
func removeIfSame(dfd int, name fuse.Name, was *unix.Statx_t) {
	var now unix.Statx_t
	if sysStatx(dfd, name.CString(), unix.AT_SYMLINK_NOFOLLOW, &now) != 0 ||
		now.Ino != was.Ino || now.Dev_major != was.Dev_major || now.Dev_minor != was.Dev_minor {
		return
	}
	flags := 0
	if now.Mode&unix.S_IFMT == unix.S_IFDIR {
		flags = unix.AT_REMOVEDIR
	}
	sysUnlinkat(dfd, name.CString(), flags)
}

// Read implements fuse.FileSystem.
func (fs *FS) Read(in *gofuse.ReadIn, dst [][]byte) (int, syscall.Errno) {
	f, e := fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return 0, e
	}
	defer f.put()
	if int64(in.Offset) < 0 {
		return 0, syscall.EINVAL
	}
	// O_DIRECT wants each half's buffer aligned as the guest aligned the
	// whole; read such files in one piece.
	if f.flags&unix.O_DIRECT == 0 {
		if n, e, ok := readSplit(f.fd, dst, int64(in.Offset)); ok {
			return n, e
		}
	}
	return rwv(f.fd, dst, int64(in.Offset), false)
}

// Write implements fuse.FileSystem.
func (fs *FS) Write(in *gofuse.WriteIn, src [][]byte) (uint32, syscall.Errno) {
	if fs.cfg.Readonly {
		return 0, syscall.EROFS
	}
	f, e := fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return 0, e
	}
	defer f.put()
	if int64(in.Offset) < 0 {
		return 0, syscall.EINVAL
	}
	if e := fs.clearCapXattr(f.fd); e != 0 {
		return 0, e
	}
	// The guest flags every write by a caller without CAP_FSETID; only
	// files with setuid or setgid bits need the capability dropped.
	if in.WriteFlags&gofuse.WRITE_KILL_SUIDGID != 0 && fs.killprivOn() && setid(f.fd) {
		return fs.writeKillpriv(f.fd, src, int64(in.Offset))
	}
	n, e := rwv(f.fd, src, int64(in.Offset), true)
	return uint32(n), e
}

// openKillpriv opens i with flags, without CAP_FSETID when kill (so that
// the truncation clears setuid and setgid bits).
func (fs *FS) openKillpriv(i *inode, flags int, kill bool) (int, syscall.Errno) {
	var g guard
	defer g.end(fs)
	if e := fs.killprivDrop(kill, &g); e != 0 {
		return -1, e
	}
	return fs.openInode(i, regular, flags)
}

// writeKillpriv writes src at off to fd without CAP_FSETID.
func (fs *FS) writeKillpriv(fd int, src [][]byte, off int64) (uint32, syscall.Errno) {
	var g guard
	defer g.end(fs)
	if e := g.dropFsetid(); e != 0 {
		return 0, e
	}
	n, e := rwv(fd, src, off, true)
	return uint32(n), e
}

// Fsync implements fuse.FileSystem.
func (fs *FS) Fsync(in *gofuse.FsyncIn) syscall.Errno { return fs.fsync(in, fileOpen) }

// FsyncDir implements fuse.FileSystem.
func (fs *FS) FsyncDir(in *gofuse.FsyncIn) syscall.Errno { return fs.fsync(in, dirOpen) }

// fsync serves FSYNC and FSYNCDIR, whose handle is of kind k.
func (fs *FS) fsync(in *gofuse.FsyncIn, k openKind) syscall.Errno {
	f, e := fs.openFile(in.NodeId, in.Fh, k)
	if e != 0 {
		return e
	}
	defer f.put()
	var err error
	if in.FsyncFlags&1 != 0 {
		err = unix.Fdatasync(f.fd)
	} else {
		err = unix.Fsync(f.fd)
	}
	return errnoOf(err)
}

// Release implements fuse.FileSystem: a handle not opened on in.NodeId,
// or a directory's, is left open (see openFileTable.remove).
func (fs *FS) Release(in *gofuse.ReleaseIn) { fs.openFiles.remove(in.NodeId, in.Fh, fileOpen) }

// ReleaseDir implements fuse.FileSystem, as Release for a directory
// handle.
func (fs *FS) ReleaseDir(in *gofuse.ReleaseIn) { fs.openFiles.remove(in.NodeId, in.Fh, dirOpen) }

// Fallocate implements fuse.FileSystem.
func (fs *FS) Fallocate(in *gofuse.FallocateIn) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	f, e := fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return e
	}
	defer f.put()
	return errnoOf(unix.Fallocate(f.fd, in.Mode, int64(in.Offset), int64(in.Length)))
}

// Lseek implements fuse.FileSystem.
func (fs *FS) Lseek(in *gofuse.LseekIn, out *gofuse.LseekOut) syscall.Errno {
	f, e := fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return e
	}
	defer f.put()
	off, err := unix.Seek(f.fd, int64(in.Offset), int(in.Whence))
	if err != nil {
		return errnoOf(err)
	}
	out.Offset = uint64(off)
	return 0
}

// CopyFileRange implements fuse.FileSystem: the source handle must be of
// the header's node id, the destination of in.NodeIdOut.
func (fs *FS) CopyFileRange(in *gofuse.CopyFileRangeIn) (uint32, syscall.Errno) {
	if fs.cfg.Readonly {
		return 0, syscall.EROFS
	}
	src, e := fs.file(in.NodeId, in.FhIn)
	if e != 0 {
		return 0, e
	}
	defer src.put()
	dst, e := fs.file(in.NodeIdOut, in.FhOut)
	if e != 0 {
		return 0, e
	}
	defer dst.put()
	offIn, offOut := int64(in.OffIn), int64(in.OffOut)
	n, err := unix.CopyFileRange(src.fd, &offIn, dst.fd, &offOut, int(min(in.Len, 1<<30)), int(in.Flags))
	if err != nil {
		return 0, errnoOf(err)
	}
	return uint32(n), 0
}

// The xattr operations are in xattr.go.

// MappingFd opens node's regular file for a DAX mapping: read-write when
// writable, else read-only (a read-write descriptor kept for a read
// mapping makes the host's exec of a mapped binary fail with ETXTBSY; the
// window asks for one when its VMM needs it). The caller owns the
// descriptor.
func (fs *FS) MappingFd(nodeID uint64, writable bool) (int, syscall.Errno) {
	i, e := fs.inode(nodeID)
	if e != 0 {
		return -1, e
	}
	defer i.put()
	switch {
	case i.isDir():
		return -1, syscall.EISDIR
	case !i.isReg():
		return -1, syscall.EACCES // a symlink too: the guest maps no link
	}
	if !writable {
		return fs.openInode(i, regular, unix.O_RDONLY)
	}
	if fs.cfg.Readonly {
		return -1, syscall.EROFS
	}
	return fs.openInode(i, regular, unix.O_RDWR)
}
