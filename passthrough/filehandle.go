// Kernel file handles (name_to_handle_at, open_by_handle_at): the
// InodeFileHandles policy, getting and comparing an inode's handle, and
// setting handles up on the shared directory. The mounts handles are opened
// on are in mountfd.go, the descriptors kept for handle-backed inodes in
// fdcache.go. (FUSE's open-file handles, the guest's fh, are openfile.go's.)

package passthrough

import (
	"bytes"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"golang.org/x/sys/unix"
)

// File handles (virtiofsd --inode-file-handles).
//
// An inode held by an O_PATH descriptor costs the daemon one descriptor for
// as long as the guest remembers it: tens of thousands on a large tree. With
// file handles enabled, lookup asks the kernel for the inode's handle
// (name_to_handle_at on the child's own O_PATH descriptor, so the handle is
// that of the inode just stat'ed) and keeps only the handle; operations that
// need a descriptor get one with open_by_handle_at and give it back after
// (FS.pathFd, fdcache.go, which keeps the recently used ones). Files are
// opened (OPEN, OPENDIR, the xattr reads) straight from the handle with the
// open flags, through the gate.
//
// open_by_handle_at needs a descriptor on the handle's mount (mountfd.go).
// The shared directory's own inode keeps its O_PATH descriptor.
//
// Handles need CAP_DAC_READ_SEARCH (for open_by_handle_at). New checks on the
// shared directory: without the capability, "prefer" turns file handles off
// and "mandatory" fails.
//
// An inode deleted on the host while no descriptor holds it cannot be
// opened from its handle again: requests on it fail with ESTALE. Nor does
// anything keep its inode number from being reused by a new file, which
// then has the same (ino, dev, mount id) key: a lookup that finds a
// handle-backed inode by key compares the name's handle with the inode's
// (unless a cached descriptor holds the inode, which rules reuse out) and
// on a mismatch makes a new inode for the key.

// InodeFileHandles is virtiofsd's --inode-file-handles.
type InodeFileHandles int

// File handle policies.
const (
	// FileHandlesNever holds every inode by an O_PATH descriptor.
	FileHandlesNever InodeFileHandles = iota
	// FileHandlesPrefer holds inodes by file handles where their
	// filesystem gives them, by O_PATH descriptors elsewhere.
	FileHandlesPrefer
	// FileHandlesMandatory holds every inode by a file handle; lookups of
	// inodes that cannot have one fail.
	FileHandlesMandatory
)

// ParseInodeFileHandles accepts virtiofsd's names (and "fallback", its old
// name for prefer).
func ParseInodeFileHandles(s string) (InodeFileHandles, error) {
	switch s {
	case "never":
		return FileHandlesNever, nil
	case "prefer", "fallback":
		return FileHandlesPrefer, nil
	case "mandatory":
		return FileHandlesMandatory, nil
	}
	return 0, fmt.Errorf("invalid inode file handles policy %q (want never, prefer or mandatory)", s)
}

// String returns the policy's virtiofsd name.
func (m InodeFileHandles) String() string {
	switch m {
	case FileHandlesNever:
		return "never"
	case FileHandlesPrefer:
		return "prefer"
	case FileHandlesMandatory:
		return "mandatory"
	}
	return fmt.Sprintf("InodeFileHandles(%d)", int(m))
}

const (
	maxFileHandleSize = 128 // MAX_HANDLE_SZ
	fileHandleHead    = 8   // struct file_handle: handle_bytes u32, handle_type s32
)

// fileHandleBuf is a struct file_handle with room for the largest handle.
type fileHandleBuf struct {
	bytes uint32
	typ   int32
	f     [maxFileHandleSize]byte
}

// raw returns the handle as open_by_handle_at takes it.
func (b *fileHandleBuf) raw() []byte {
	n := min(int(b.bytes), maxFileHandleSize)
	return unsafe.Slice((*byte)(unsafe.Pointer(b)), fileHandleHead+n)
}

// sysNameToHandleAt gets the file handle of the inode fd holds (fd may be
// O_PATH) and the id of the mount it is on.
func sysNameToHandleAt(fd int, b *fileHandleBuf, mnt *int32) syscall.Errno {
	b.bytes = maxFileHandleSize
	_, _, e := syscall.Syscall6(unix.SYS_NAME_TO_HANDLE_AT, uintptr(fd), uintptr(unsafe.Pointer(&emptyPath[0])),
		uintptr(unsafe.Pointer(b)), uintptr(unsafe.Pointer(mnt)), unix.AT_EMPTY_PATH, 0)
	return e
}

// sameFileHandle reports whether name in the directory dirfd is the inode
// that handle-backed inode i holds.
func sameFileHandle(dirfd int, name fuse.Name, i *inode) bool {
	var b fileHandleBuf
	var mnt int32
	b.bytes = maxFileHandleSize
	_, _, e := syscall.Syscall6(unix.SYS_NAME_TO_HANDLE_AT, uintptr(dirfd), uintptr(unsafe.Pointer(name.CString())),
		uintptr(unsafe.Pointer(&b)), uintptr(unsafe.Pointer(&mnt)), 0, 0)
	return e == 0 && uint64(uint32(mnt)) == i.mnt.id && bytes.Equal(b.raw(), i.fileHandle)
}

// sysOpenByHandleAt opens the inode of the file handle fileHandle (a
// struct file_handle) on the mount mountFd is on.
func sysOpenByHandleAt(mountFd int, fileHandle []byte, flags int) (int, syscall.Errno) {
	fd, _, e := syscall.Syscall(unix.SYS_OPEN_BY_HANDLE_AT, uintptr(mountFd), uintptr(unsafe.Pointer(&fileHandle[0])), uintptr(flags|unix.O_CLOEXEC))
	if e != 0 {
		return -1, e
	}
	return int(fd), 0
}

// initFileHandles sets file handles up on the shared directory (rootFd, an
// O_PATH descriptor): its mount's descriptor, and a check that handles work
// there and the daemon may open them.
func (fs *FS) initFileHandles(rootFd int) error {
	fs.fileHandleMode = fs.cfg.InodeFileHandles
	if fs.fileHandleMode == FileHandlesNever {
		return nil
	}
	n := fs.cfg.HandleCacheSize
	if n == 0 {
		n = DefaultHandleCacheSize
	}
	fs.fdc = newFdCache(max(n, 0))
	fs.mounts.m = map[uint64]*mount{}
	var b fileHandleBuf
	var mnt int32
	var st unix.Statx_t
	e := fstatx(rootFd, &st)
	if e == 0 {
		e = sysNameToHandleAt(rootFd, &b, &mnt)
	}
	if e == 0 {
		// The reference is never dropped: the shared directory's
		// mount stays.
		_, e = fs.mountFor(uint64(uint32(mnt)), rootFd, &st, b.raw())
	}
	if e == 0 {
		return nil
	}
	if fs.fileHandleMode == FileHandlesMandatory {
		if e == syscall.EPERM {
			return fmt.Errorf("--inode-file-handles=mandatory: cannot open file handles (needs CAP_DAC_READ_SEARCH): %w", e)
		}
		return fmt.Errorf("--inode-file-handles=mandatory: no file handles on the shared directory %s: %w", fs.cfg.Root, e)
	}
	if e == syscall.EPERM {
		fs.fileHandleMode = FileHandlesNever
		fs.fileHandleNote = "file handles disabled: cannot open them without CAP_DAC_READ_SEARCH"
		return nil
	}
	fs.fileHandleNote = fmt.Sprintf("the shared directory's filesystem gives no usable file handles (%v): its inodes keep O_PATH descriptors", e)
	return nil
}

// FileHandles reports the file handle policy in force (prefer may have
// become never, see New) and, when it differs from what was asked or
// handles are unavailable on the shared directory, why.
func (fs *FS) FileHandles() (InodeFileHandles, string) { return fs.fileHandleMode, fs.fileHandleNote }

// checkFileHandle opens fileHandle on mountFd and checks that it is the
// inode fd holds.
func checkFileHandle(mountFd, fd int, fileHandle []byte) syscall.Errno {
	hfd, e := sysOpenByHandleAt(mountFd, fileHandle, unix.O_PATH)
	if e != 0 {
		return e
	}
	defer unix.Close(hfd)
	var a, b unix.Statx_t
	if e := fstatx(hfd, &a); e != 0 {
		return e
	}
	if e := fstatx(fd, &b); e != 0 {
		return e
	}
	if keyOf(&a) != keyOf(&b) {
		return syscall.EOPNOTSUPP
	}
	return 0
}

// fileHandleOf returns the file handle of the inode the O_PATH descriptor
// fd holds (stat'ed into st), and its mount, with a reference.
func (fs *FS) fileHandleOf(fd int, st *unix.Statx_t) ([]byte, *mount, syscall.Errno) {
	var b fileHandleBuf
	var mnt int32
	if e := sysNameToHandleAt(fd, &b, &mnt); e != 0 {
		return nil, nil, e
	}
	m, e := fs.mountFor(uint64(uint32(mnt)), fd, st, b.raw())
	if e != 0 {
		return nil, nil, e
	}
	return append([]byte(nil), b.raw()...), m, 0
}
