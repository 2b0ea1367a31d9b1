package passthrough

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// IoctlFsGetXattr is FS_IOC_FSGETXATTR, the only ioctl the daemon makes:
// it reads a file's FS_XFLAG_DAX for InodeDAX.
const IoctlFsGetXattr = 0x801c581f

const fsXflagDAX = 0x8000 // FS_XFLAG_DAX

// fsxattr is the kernel's struct fsxattr.
type fsxattr struct {
	xflags, extsize, nextents, projid, cowextsize uint32
	pad                                           [8]byte
}

// The answers InodeDAX keeps in inode.dax.
const (
	daxOff = 1
	daxOn  = 2
)

// InodeDAX implements dax.Files: whether the guest, mounted with dax=inode,
// reaches nodeID's file through the DAX window (FUSE_ATTR_DAX). The rule:
// a regular file is DAX when the host file carries FS_XFLAG_DAX (chattr +x,
// xfs_io -c 'chattr +x'); when its filesystem cannot say (no
// FS_IOC_FSGETXATTR, or the file cannot be opened), when the directory it
// was found in (parent) carries the flag; otherwise not. On a filesystem
// that holds the flag (ext4, xfs), a directory's flag passes to the files
// made in it afterwards.
//
// Reading the flag takes opening the file, so the answer is kept: replies
// that name the parent (LOOKUP, READDIRPLUS, CREATE, ...) read it again
// only when the file's ctime moved (setting the flag moves it), the others
// (GETATTR, SETATTR) take the kept answer.
func (fs *FS) InodeDAX(nodeID, parent uint64) bool {
	i, e := fs.inode(nodeID)
	if e != 0 {
		return false
	}
	defer i.put()
	if !i.isReg() {
		return false
	}
	v := i.dax.Load()
	if v != 0 && parent == 0 {
		return v == daxOn
	}
	ctime := int64(-1)
	if pf, e := fs.pathFd(i); e == 0 {
		var st unix.Statx_t
		if fstatx(pf.fd, &st) == 0 {
			ctime = st.Ctime.Sec*1e9 + int64(st.Ctime.Nsec)
		}
		pf.put()
	}
	if v != 0 && ctime >= 0 && ctime == i.daxCtime.Load() {
		return v == daxOn
	}
	on, ok := fs.xflagDAX(i)
	if !ok {
		ctime = -1 // the parent's flag decides; its changes do not show here
		if parent != 0 {
			if p, e := fs.inode(parent); e == 0 {
				if p.isDir() {
					on, _ = fs.xflagDAX(p)
				}
				p.put()
			}
		}
	}
	v = daxOff
	if on {
		v = daxOn
	}
	i.daxCtime.Store(ctime)
	i.dax.Store(v)
	return on
}

// xflagDAX reads FS_XFLAG_DAX of i's file; ok is false when the file
// cannot tell.
func (fs *FS) xflagDAX(i *inode) (on, ok bool) {
	fd, e := fs.openInode(i, regular|directory, unix.O_RDONLY|unix.O_NONBLOCK)
	if e != 0 {
		return false, false
	}
	defer unix.Close(fd)
	var x fsxattr
	if _, _, e := syscall.Syscall(unix.SYS_IOCTL, uintptr(fd), IoctlFsGetXattr, uintptr(unsafe.Pointer(&x))); e != 0 {
		return false, false
	}
	return x.xflags&fsXflagDAX != 0, true
}
