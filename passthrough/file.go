package passthrough

import (
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// openFlags turns the guest's open flags into the host's, following the
// cache policy and options.
func (fs *FS) openFlags(flags uint32) int {
	f := int(flags) &^ (unix.O_APPEND | unix.O_NOCTTY | unix.O_NOFOLLOW)
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
	flags := fs.openFlags(in.Flags)
	if fs.cfg.Readonly && writes(flags) {
		return syscall.EROFS
	}
	fd, e := fs.reopen(i, flags)
	if e != 0 {
		return e
	}
	i.refs.Add(1)
	out.Fh = fs.handles.add(&handle{fd: fd, ino: i, flags: uint32(flags)})
	out.OpenFlags = fs.fileOpenFlags()
	return 0
}

// Create implements fuse.FileSystem.
func (fs *FS) Create(in *gofuse.CreateIn, name fuse.Name, out *gofuse.CreateOut) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	p, e := fs.inode(in.NodeId)
	if e != 0 {
		return e
	}
	defer p.put()
	if !p.isDir() {
		return syscall.ENOTDIR
	}
	flags := fs.openFlags(in.Flags) | unix.O_CREAT | unix.O_NOFOLLOW
	sw, e := fs.asCaller(in.Uid, in.Gid)
	if e != 0 {
		return e
	}
	fd, e := sysOpenat(p.fd, name.CString(), flags, in.Mode&^(in.Umask&07777))
	fs.restore(sw)
	if e != 0 {
		return e
	}
	if e := fs.lookup(p, name, &out.EntryOut); e != 0 {
		unix.Close(fd)
		return e
	}
	i := fs.inodes.get(out.NodeId)
	if i == nil {
		// Forgotten already by a hostile guest; nothing to attach to.
		unix.Close(fd)
		return syscall.EIO
	}
	out.OpenOut.Fh = fs.handles.add(&handle{fd: fd, ino: i, flags: uint32(flags)})
	out.OpenOut.OpenFlags = fs.fileOpenFlags()
	return 0
}

// file returns the open regular-file handle fh.
func (fs *FS) file(fh uint64) (*handle, syscall.Errno) {
	h, e := fs.handle(fh)
	if e != 0 {
		return nil, e
	}
	if h.dir != nil {
		h.put()
		return nil, syscall.EISDIR
	}
	return h, 0
}

// Read implements fuse.FileSystem.
func (fs *FS) Read(in *gofuse.ReadIn, dst [][]byte) (int, syscall.Errno) {
	h, e := fs.file(in.Fh)
	if e != 0 {
		return 0, e
	}
	defer h.put()
	if int64(in.Offset) < 0 {
		return 0, syscall.EINVAL
	}
	return rwv(h.fd, dst, int64(in.Offset), false)
}

// Write implements fuse.FileSystem.
func (fs *FS) Write(in *gofuse.WriteIn, src [][]byte) (uint32, syscall.Errno) {
	if fs.cfg.Readonly {
		return 0, syscall.EROFS
	}
	h, e := fs.file(in.Fh)
	if e != 0 {
		return 0, e
	}
	defer h.put()
	if int64(in.Offset) < 0 {
		return 0, syscall.EINVAL
	}
	n, e := rwv(h.fd, src, int64(in.Offset), true)
	return uint32(n), e
}

// Flush implements fuse.FileSystem.
func (fs *FS) Flush(in *gofuse.FlushIn) syscall.Errno {
	h, e := fs.handle(in.Fh)
	if e != 0 {
		return e
	}
	h.put()
	return 0
}

// Fsync implements fuse.FileSystem.
func (fs *FS) Fsync(in *gofuse.FsyncIn) syscall.Errno {
	h, e := fs.handle(in.Fh)
	if e != 0 {
		return e
	}
	defer h.put()
	var err error
	if in.FsyncFlags&1 != 0 {
		err = unix.Fdatasync(h.fd)
	} else {
		err = unix.Fsync(h.fd)
	}
	if err != nil {
		return err.(syscall.Errno)
	}
	return 0
}

// FsyncDir implements fuse.FileSystem.
func (fs *FS) FsyncDir(in *gofuse.FsyncIn) syscall.Errno { return fs.Fsync(in) }

// Release implements fuse.FileSystem.
func (fs *FS) Release(in *gofuse.ReleaseIn) { fs.handles.remove(in.Fh) }

// ReleaseDir implements fuse.FileSystem.
func (fs *FS) ReleaseDir(in *gofuse.ReleaseIn) { fs.handles.remove(in.Fh) }

// Fallocate implements fuse.FileSystem.
func (fs *FS) Fallocate(in *gofuse.FallocateIn) syscall.Errno {
	if fs.cfg.Readonly {
		return syscall.EROFS
	}
	h, e := fs.file(in.Fh)
	if e != 0 {
		return e
	}
	defer h.put()
	if err := unix.Fallocate(h.fd, in.Mode, int64(in.Offset), int64(in.Length)); err != nil {
		return err.(syscall.Errno)
	}
	return 0
}

// Lseek implements fuse.FileSystem.
func (fs *FS) Lseek(in *gofuse.LseekIn, out *gofuse.LseekOut) syscall.Errno {
	h, e := fs.file(in.Fh)
	if e != 0 {
		return e
	}
	defer h.put()
	off, err := unix.Seek(h.fd, int64(in.Offset), int(in.Whence))
	if err != nil {
		return err.(syscall.Errno)
	}
	out.Offset = uint64(off)
	return 0
}

// CopyFileRange implements fuse.FileSystem.
func (fs *FS) CopyFileRange(in *gofuse.CopyFileRangeIn) (uint32, syscall.Errno) {
	if fs.cfg.Readonly {
		return 0, syscall.EROFS
	}
	src, e := fs.file(in.FhIn)
	if e != 0 {
		return 0, e
	}
	defer src.put()
	dst, e := fs.file(in.FhOut)
	if e != 0 {
		return 0, e
	}
	defer dst.put()
	offIn, offOut := int64(in.OffIn), int64(in.OffOut)
	n, err := unix.CopyFileRange(src.fd, &offIn, dst.fd, &offOut, int(min(in.Len, 1<<30)), int(in.Flags))
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return uint32(n), 0
}

// Xattr operations are answered with ENOSYS until xattr support lands; the
// guest then stops asking.

// GetXAttr implements fuse.FileSystem.
func (fs *FS) GetXAttr(h *gofuse.InHeader, name fuse.Name, dst []byte) (int, syscall.Errno) {
	return 0, syscall.ENOSYS
}

// ListXAttr implements fuse.FileSystem.
func (fs *FS) ListXAttr(h *gofuse.InHeader, dst []byte) (int, syscall.Errno) {
	return 0, syscall.ENOSYS
}

// SetXAttr implements fuse.FileSystem.
func (fs *FS) SetXAttr(in *gofuse.SetXAttrIn, name fuse.Name, value []byte) syscall.Errno {
	return syscall.ENOSYS
}

// RemoveXAttr implements fuse.FileSystem.
func (fs *FS) RemoveXAttr(h *gofuse.InHeader, name fuse.Name) syscall.Errno {
	return syscall.ENOSYS
}
