// The mount table: one open descriptor per mount on which inodes are held
// by file handles, for open_by_handle_at (filehandle.go).

package passthrough

import (
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

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
// handles.

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

// mountFor returns the mount with id id, with a reference to put,
// registering it if new: fd (an O_PATH descriptor of an inode on that
// mount, stat'ed into st, whose file handle is fileHandle) is re-opened as
// the mount's descriptor and checked by opening fileHandle with it.
func (fs *FS) mountFor(id uint64, fd int, st *unix.Statx_t, fileHandle []byte) (*mount, syscall.Errno) {
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
	e = checkFileHandle(mfd, fd, fileHandle)
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

// closeAll closes every mount's descriptor and empties the table, for a New
// that failed after setting file handles up (no inode holds a mount then,
// but for the shared directory's own reference).
func (t *mountTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, m := range t.m {
		if m.fd >= 0 {
			unix.Close(m.fd)
		}
		delete(t.m, id)
	}
}
