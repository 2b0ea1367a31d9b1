package passthrough

import (
	"sync"
	"syscall"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The guest sends FLUSH at every close(2) of a file and waits for the
// reply, so a handle that needs none saves the guest a round trip per
// close. A FLUSH does two things on the host (see Flush): it lets the
// file system report a deferred write error, and it would drop POSIX
// locks, were they forwarded. Neither can happen when
//   - the guest keeps its locks to itself (no POSIX_LOCKS or FLOCK_LOCKS
//     negotiated, which is always the case here), and
//   - the handle cannot write, or its file system has no flush operation
//     (local disk and memory file systems: closing a descriptor there
//     reports nothing).
// Such handles are opened with FOPEN_NOFLUSH. With writeback caching the
// guest flushes its dirty pages at close whatever the flag says.

// noFlushFS lists the file systems (statfs f_type) whose descriptors
// report nothing when closed.
var noFlushFS = map[int64]bool{
	unix.EXT4_SUPER_MAGIC:  true, // also ext2 and ext3
	unix.XFS_SUPER_MAGIC:   true,
	unix.BTRFS_SUPER_MAGIC: true,
	unix.TMPFS_MAGIC:       true,
}

// flushNeeds remembers, per mount id, whether descriptors there may
// report something when closed.
type flushNeeds struct {
	mu sync.RWMutex
	m  map[uint64]bool
}

// needsFlush reports whether closing fd, a descriptor on mount mnt, may
// report an error: it asks statfs once per mount.
func (n *flushNeeds) needsFlush(fd int, mnt uint64) bool {
	n.mu.RLock()
	need, ok := n.m[mnt]
	n.mu.RUnlock()
	if ok {
		return need
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return true // unknown: keep FLUSH
	}
	need = !noFlushFS[int64(st.Type)]
	n.mu.Lock()
	if n.m == nil {
		n.m = make(map[uint64]bool)
	}
	n.m[mnt] = need
	n.mu.Unlock()
	return need
}

// fopenFlags returns the FOPEN flags for a new open file on fd, opened on
// inode i with the host flags given.
func (fs *FS) fopenFlags(fd int, i *inode, flags int) uint32 {
	f := fs.fileOpenFlags()
	if fs.flags.Load()&(gofuse.CAP_POSIX_LOCKS|gofuse.CAP_FLOCK_LOCKS) != 0 {
		return f
	}
	if !writes(flags) || !fs.flushNeeds.needsFlush(fd, i.key.mnt) {
		f |= gofuse.FOPEN_NOFLUSH
	}
	return f
}

// Flush implements fuse.FileSystem: it closes a duplicate of the handle's
// descriptor, so that a file system that defers write errors to close(2)
// reports them to the guest's close.
func (fs *FS) Flush(in *gofuse.FlushIn) syscall.Errno {
	f, e := fs.file(in.NodeId, in.Fh)
	if e != 0 {
		return e
	}
	defer f.put()
	fd, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return errnoOf(err)
	}
	return errnoOf(unix.Close(fd))
}
