package passthrough

import (
	"bytes"
	"fmt"
	"sync"
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
// need a descriptor get one with open_by_handle_at and give it back after.
//
// Recently used handle-backed inodes keep their O_PATH descriptors in a small
// LRU cache (fdCache) so that hot inodes (GETATTR loops, lookups beneath a
// directory) do not pay open_by_handle_at each time; its size bounds the
// descriptors it holds. Cache entries are reference counted: a request holds
// one while it uses the descriptor, and only unreferenced entries are
// evicted, so a descriptor is never closed under another request. When every
// entry is in use, a request gets a descriptor of its own, closed when it is
// done. Files are opened (OPEN, OPENDIR, the xattr reads) straight from the
// handle with the open flags, without the cache.
//
// open_by_handle_at needs a descriptor on the handle's mount, and not an
// O_PATH one (the kernel refuses those with EBADF). The daemon keeps one per
// mount id (the id name_to_handle_at reports, so a handle is always opened
// on the mount it came from): for the shared directory's mount, the shared
// directory opened read-only; for any other mount, the first regular file
// or directory a lookup meets on it (the root of the submount, since
// lookups walk down from the shared directory) re-opened read-only through
// /proc/self/fd. That avoids parsing /proc/self/mountinfo, which the
// sandbox may hide. A submount's descriptor is reference counted by the
// handle-backed inodes on it and closes with the last of them, so that a
// submount the guest forgot is not kept busy on the host. When a mount is
// first met its descriptor is checked by opening the handle with it (and
// comparing the inode); a mount where that fails is remembered as without
// handles. The shared directory's own inode keeps its O_PATH descriptor.
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

// DefaultHandleCacheSize is how many O_PATH descriptors of handle-backed
// inodes are kept open when Config.HandleCacheSize is zero.
const DefaultHandleCacheSize = 32

const (
	maxHandleSize  = 128 // MAX_HANDLE_SZ
	fileHandleHead = 8   // struct file_handle: handle_bytes u32, handle_type s32
)

// fileHandleBuf is a struct file_handle with room for the largest handle.
type fileHandleBuf struct {
	bytes uint32
	typ   int32
	f     [maxHandleSize]byte
}

// raw returns the handle as open_by_handle_at takes it.
func (b *fileHandleBuf) raw() []byte {
	n := min(int(b.bytes), maxHandleSize)
	return unsafe.Slice((*byte)(unsafe.Pointer(b)), fileHandleHead+n)
}

// sysNameToHandleAt gets the file handle of the inode fd holds (fd may be
// O_PATH) and the id of the mount it is on.
func sysNameToHandleAt(fd int, b *fileHandleBuf, mnt *int32) syscall.Errno {
	b.bytes = maxHandleSize
	_, _, e := syscall.Syscall6(unix.SYS_NAME_TO_HANDLE_AT, uintptr(fd), uintptr(unsafe.Pointer(&emptyPath[0])),
		uintptr(unsafe.Pointer(b)), uintptr(unsafe.Pointer(mnt)), unix.AT_EMPTY_PATH, 0)
	return e
}

// sameHandle reports whether name in the directory dirfd is the inode
// that handle-backed inode i holds.
func sameHandle(dirfd int, name fuse.Name, i *inode) bool {
	var b fileHandleBuf
	var mnt int32
	b.bytes = maxHandleSize
	_, _, e := syscall.Syscall6(unix.SYS_NAME_TO_HANDLE_AT, uintptr(dirfd), uintptr(unsafe.Pointer(name.CString())),
		uintptr(unsafe.Pointer(&b)), uintptr(unsafe.Pointer(&mnt)), 0, 0)
	return e == 0 && uint64(uint32(mnt)) == i.mnt.id && bytes.Equal(b.raw(), i.fh)
}

// sysOpenByHandleAt opens the inode of handle fh (a struct file_handle) on
// the mount mountFd is on.
func sysOpenByHandleAt(mountFd int, fh []byte, flags int) (int, syscall.Errno) {
	fd, _, e := syscall.Syscall(unix.SYS_OPEN_BY_HANDLE_AT, uintptr(mountFd), uintptr(unsafe.Pointer(&fh[0])), uintptr(flags|unix.O_CLOEXEC))
	if e != 0 {
		return -1, e
	}
	return int(fd), 0
}

// mount is a mount on which inodes are held by file handles.
type mount struct {
	id    uint64
	dev   uint64        // of the inode that registered it
	fd    int           // an open (not O_PATH) descriptor on the mount; -1 if handles do not work there
	err   syscall.Errno // why they do not
	cache *fdCache
	tab   *mountTable
	// refs counts the handle-backed inodes on the mount (and one for the
	// shared directory's mount, which stays); the descriptor closes, and
	// the mount leaves the table, when none is left, so that the daemon
	// does not keep a submount the guest no longer uses busy on the host.
	// Guarded by tab.mu.
	refs int
}

// mountTable holds the mounts by mount id.
type mountTable struct {
	mu sync.Mutex
	m  map[uint64]*mount
}

// put drops a reference taken by FS.mountFor.
func (m *mount) put() {
	t := m.tab
	t.mu.Lock()
	if m.refs--; m.refs > 0 {
		t.mu.Unlock()
		return
	}
	if t.m[m.id] == m {
		delete(t.m, m.id)
	}
	t.mu.Unlock()
	unix.Close(m.fd)
}

// count returns how many mounts with handles the table holds.
func (t *mountTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, m := range t.m {
		if m.fd >= 0 {
			n++
		}
	}
	return n
}

// initHandles sets file handles up on the shared directory (rootFd, an
// O_PATH descriptor): its mount's descriptor, and a check that handles work
// there and the daemon may open them.
func (fs *FS) initHandles(rootFd int) error {
	fs.hmode = fs.cfg.InodeFileHandles
	if fs.hmode == FileHandlesNever {
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
	if fs.hmode == FileHandlesMandatory {
		if e == syscall.EPERM {
			return fmt.Errorf("--inode-file-handles=mandatory: cannot open file handles (needs CAP_DAC_READ_SEARCH): %w", e)
		}
		return fmt.Errorf("--inode-file-handles=mandatory: no file handles on the shared directory %s: %w", fs.cfg.Root, e)
	}
	if e == syscall.EPERM {
		fs.hmode = FileHandlesNever
		fs.hnote = "file handles disabled: cannot open them without CAP_DAC_READ_SEARCH"
		return nil
	}
	fs.hnote = fmt.Sprintf("the shared directory's filesystem gives no usable file handles (%v): its inodes keep O_PATH descriptors", e)
	return nil
}

// FileHandles reports the file handle policy in force (prefer may have
// become never, see New) and, when it differs from what was asked or
// handles are unavailable on the shared directory, why.
func (fs *FS) FileHandles() (InodeFileHandles, string) { return fs.hmode, fs.hnote }

// mountFor returns the mount with id id, with a reference to put,
// registering it if new: fd (an O_PATH descriptor of an inode on that
// mount, stat'ed into st, whose handle is fh) is re-opened as the mount's
// descriptor and checked by opening fh with it.
func (fs *FS) mountFor(id uint64, fd int, st *unix.Statx_t, fh []byte) (*mount, syscall.Errno) {
	t := &fs.mounts
	t.mu.Lock()
	defer t.mu.Unlock()
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	if m := t.m[id]; m != nil {
		if m.fd >= 0 {
			m.refs++
			return m, 0
		}
		if m.dev == dev {
			return nil, m.err
		}
		// A failed mount's id, reused by another mount: try again.
		delete(t.m, id)
	}
	mfd, e := fs.openHeld(fd, uint32(st.Mode), regular|directory, unix.O_RDONLY|unix.O_NONBLOCK)
	switch {
	case e == syscall.ELOOP || e == syscall.EACCES:
		// Not a file or directory; a later inode may serve.
		return nil, syscall.EOPNOTSUPP
	case e != 0:
		return nil, e
	}
	e = checkHandle(mfd, fd, fh)
	if e != 0 {
		unix.Close(mfd)
		// A mount whose handles do not work is remembered; running out
		// of descriptors or memory (which a guest can cause) passes.
		if e != syscall.ESTALE && e != syscall.EMFILE && e != syscall.ENFILE && e != syscall.ENOMEM {
			t.m[id] = &mount{id: id, dev: dev, fd: -1, err: e}
		}
		return nil, e
	}
	m := &mount{id: id, dev: dev, fd: mfd, cache: fs.fdc, tab: t, refs: 1}
	t.m[id] = m
	return m, 0
}

// checkHandle opens fh on mountFd and checks that it is the inode fd holds.
func checkHandle(mountFd, fd int, fh []byte) syscall.Errno {
	hfd, e := sysOpenByHandleAt(mountFd, fh, unix.O_PATH)
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

// handleOf returns the file handle of the inode the O_PATH descriptor fd
// holds (stat'ed into st), and its mount, with a reference.
func (fs *FS) handleOf(fd int, st *unix.Statx_t) ([]byte, *mount, syscall.Errno) {
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

// newInode adds the inode that the O_PATH descriptor fd (stat'ed into st)
// holds, or references the existing one; fd is taken over.
func (fs *FS) newInode(fd int, st *unix.Statx_t) (*inode, syscall.Errno) {
	if e := fs.inodeRoom(); e != 0 {
		unix.Close(fd)
		return nil, e
	}
	k, mode := keyOf(st), uint32(st.Mode)
	if fs.hmode == FileHandlesNever {
		i, _ := fs.inodes.insert(k, fd, nil, nil, mode)
		return i, 0
	}
	fh, m, e := fs.handleOf(fd, st)
	if e != 0 {
		if fs.hmode == FileHandlesMandatory {
			unix.Close(fd)
			return nil, e
		}
		i, _ := fs.inodes.insert(k, fd, nil, nil, mode)
		return i, 0
	}
	i, fresh := fs.inodes.insert(k, -1, fh, m, mode)
	if !fresh {
		m.put() // the new inode would have held it
	}
	if fresh && (i.isDir() || i.isReg() || i.isLnk()) {
		// A lookup is usually followed by lookups beneath a directory,
		// by an open of a file or by a READLINK of a symlink: keep the
		// descriptor at hand rather than open the handle again (and so
		// an open or READLINK right after the lookup still works if the
		// entry is unlinked or renamed over in between, which the
		// handle of a deleted inode cannot do).
		m.cache.add(i, fd, false)
	} else {
		unix.Close(fd)
	}
	return i, 0
}

// pathFd is an O_PATH descriptor of an inode, valid until put.
type pathFd struct {
	fd   int
	slot *fdSlot // the cache entry referenced, if any
	c    *fdCache
	own  bool // fd is the holder's, to close
}

func (p pathFd) put() {
	switch {
	case p.slot != nil:
		p.c.release(p.slot)
	case p.own:
		unix.Close(p.fd)
	}
}

// pathFd returns an O_PATH descriptor of inode i (on which the caller holds
// a use reference), to put when done. It fails (ESTALE) for a
// handle-backed inode deleted on the host.
//
// The descriptor of a handle-backed inode is opened with the daemon's
// capabilities (CAP_DAC_READ_SEARCH): get it before switching to the
// caller's credentials.
func (fs *FS) pathFd(i *inode) (pathFd, syscall.Errno) {
	if i.fd >= 0 {
		return pathFd{fd: i.fd}, 0
	}
	c := i.mnt.cache
	if fd, s := c.get(i); s != nil {
		return pathFd{fd: fd, slot: s, c: c}, 0
	}
	fd, e := sysOpenByHandleAt(i.mnt.fd, i.fh, unix.O_PATH|unix.O_NOFOLLOW)
	if e != 0 {
		return pathFd{fd: -1}, e
	}
	if cfd, s := c.add(i, fd, true); s != nil {
		return pathFd{fd: cfd, slot: s, c: c}, 0
	}
	return pathFd{fd: fd, own: true}, 0
}

// fdSlot is an fdCache entry.
type fdSlot struct {
	fd    int    // -1 when empty
	owner *inode // nil when empty or when its inode went while in use
	refs  int32  // requests using fd
	prev  *fdSlot
	next  *fdSlot
}

// fdCache keeps O_PATH descriptors of recently used handle-backed inodes.
// Every field, and the slot field of the inodes, is guarded by mu. An
// entry holds a descriptor only while it has an owner or references.
type fdCache struct {
	mu    sync.Mutex
	slots []fdSlot
	lru   fdSlot // list head: lru.next is the most recently used
}

func newFdCache(n int) *fdCache {
	c := &fdCache{slots: make([]fdSlot, n)}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	for k := range c.slots {
		s := &c.slots[k]
		s.fd = -1
		c.pushBack(s)
	}
	return c
}

func (c *fdCache) unlink(s *fdSlot) {
	s.prev.next, s.next.prev = s.next, s.prev
}

func (c *fdCache) pushFront(s *fdSlot) {
	s.prev, s.next = &c.lru, c.lru.next
	s.next.prev, c.lru.next = s, s
}

func (c *fdCache) pushBack(s *fdSlot) {
	s.prev, s.next = c.lru.prev, &c.lru
	s.prev.next, c.lru.prev = s, s
}

// get returns i's cached descriptor with a reference on its entry, or a
// nil entry.
func (c *fdCache) get(i *inode) (int, *fdSlot) {
	c.mu.Lock()
	s := i.slot
	fd := -1
	if s != nil {
		s.refs++
		fd = s.fd
		c.unlink(s)
		c.pushFront(s)
	}
	c.mu.Unlock()
	return fd, s
}

// add caches fd as i's descriptor, in place of the least recently used
// unreferenced entry. With ref the caller gets a reference on the entry,
// whose descriptor it returns (another request's, fd closed, if that one
// cached i first); a nil entry then means the cache is full of entries in
// use and fd stays the caller's. Without ref, add takes fd over in any case.
func (c *fdCache) add(i *inode, fd int, ref bool) (int, *fdSlot) {
	c.mu.Lock()
	if s := i.slot; s != nil {
		var got int
		if ref {
			s.refs++
			got = s.fd
			c.unlink(s)
			c.pushFront(s)
		} else {
			s = nil
		}
		c.mu.Unlock()
		unix.Close(fd)
		return got, s
	}
	if !ref && i.refs.Load() == 0 {
		// The inode went already (the caller holds no reference).
		c.mu.Unlock()
		unix.Close(fd)
		return -1, nil
	}
	var s *fdSlot
	for v := c.lru.prev; v != &c.lru; v = v.prev {
		if v.refs == 0 {
			s = v
			break
		}
	}
	if s == nil {
		c.mu.Unlock()
		if !ref {
			unix.Close(fd)
		}
		return -1, nil
	}
	old := s.fd
	if s.owner != nil {
		s.owner.slot = nil
	}
	s.fd, s.owner, i.slot = fd, i, s
	if ref {
		s.refs = 1
	}
	c.unlink(s)
	c.pushFront(s)
	c.mu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
	if !ref {
		return -1, nil
	}
	return fd, s
}

// holds reports whether the cache holds a descriptor of i.
func (c *fdCache) holds(i *inode) bool {
	c.mu.Lock()
	ok := i.slot != nil
	c.mu.Unlock()
	return ok
}

// release drops a reference taken by get or add.
func (c *fdCache) release(s *fdSlot) {
	fd := -1
	c.mu.Lock()
	s.refs--
	if s.refs == 0 && s.owner == nil {
		fd, s.fd = s.fd, -1
		c.unlink(s)
		c.pushBack(s)
	}
	c.mu.Unlock()
	if fd >= 0 {
		unix.Close(fd)
	}
}

// drop forgets i's entry: i is gone. A descriptor in use closes when the
// last request using it is done.
func (c *fdCache) drop(i *inode) {
	fd := -1
	c.mu.Lock()
	if s := i.slot; s != nil {
		i.slot, s.owner = nil, nil
		if s.refs == 0 {
			fd, s.fd = s.fd, -1
			c.unlink(s)
			c.pushBack(s)
		}
	}
	c.mu.Unlock()
	if fd >= 0 {
		unix.Close(fd)
	}
}

// flush closes every descriptor not in use.
func (c *fdCache) flush() {
	c.mu.Lock()
	var fds []int
	for k := range c.slots {
		s := &c.slots[k]
		if s.refs == 0 && s.fd >= 0 {
			fds = append(fds, s.fd)
			if s.owner != nil {
				s.owner.slot = nil
			}
			s.fd, s.owner = -1, nil
			c.unlink(s)
			c.pushBack(s)
		}
	}
	c.mu.Unlock()
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// open returns the number of descriptors the cache holds.
func (c *fdCache) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k := range c.slots {
		if c.slots[k].fd >= 0 {
			n++
		}
	}
	return n
}
