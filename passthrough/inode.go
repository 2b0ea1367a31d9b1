// The inode store: the host inodes the guest knows by node id, held by
// O_PATH descriptors or file handles (filehandle.go), and how a lookup's
// descriptor becomes one (FS.newInode).

package passthrough

import (
	"bytes"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// RootID is the node id of the shared directory.
const RootID = 1

// inodeKey identifies a host inode across names: the same file reached by
// two names (hard links) gets one node id.
type inodeKey struct {
	ino, dev, mnt uint64
}

func keyOf(st *unix.Statx_t) inodeKey {
	return inodeKey{ino: st.Ino, dev: unix.Mkdev(st.Dev_major, st.Dev_minor), mnt: st.Mnt_id}
}

// inode is a host file the guest knows by a node id. It holds an O_PATH
// descriptor, so it stays reachable whatever happens to its names, or,
// with file handles, the inode's file handle, which reaches it for as long
// as it exists (see filehandle.go). FS.pathFd gives a descriptor of either.
type inode struct {
	id   uint64
	key  inodeKey
	fd   int    // O_PATH descriptor; -1 when fileHandle holds the inode
	mode uint32 // file type bits

	// With a file handle: the handle (a struct file_handle), its mount,
	// and the descriptor cache entry (guarded by mnt.cache.mu).
	fileHandle []byte
	mnt        *mount
	slot       *fdSlot

	// dax is InodeDAX's last answer (see dax.go): 0 not asked yet,
	// daxOff or daxOn; daxCtime the file's ctime then (-1: ask again).
	dax      atomic.Int32
	daxCtime atomic.Int64

	lookups uint64 // guest references; guarded by the store's lock
	// refs counts the table's reference (while lookups > 0) plus every
	// request using the inode; the fd closes when it drops to zero.
	refs atomic.Int64
}

func (i *inode) put() {
	if i.refs.Add(-1) == 0 {
		if i.fd >= 0 {
			unix.Close(i.fd)
		} else if i.mnt != nil {
			i.mnt.cache.drop(i)
			i.mnt.put()
		}
	}
}

func (i *inode) isDir() bool { return i.mode&unix.S_IFMT == unix.S_IFDIR }
func (i *inode) isReg() bool { return i.mode&unix.S_IFMT == unix.S_IFREG }
func (i *inode) isLnk() bool { return i.mode&unix.S_IFMT == unix.S_IFLNK }

// inodeStore maps node ids and host identities to inodes.
type inodeStore struct {
	mu    sync.Mutex
	byID  map[uint64]*inode
	byKey map[inodeKey]*inode
	next  uint64
}

func newInodeStore() *inodeStore {
	return &inodeStore{byID: map[uint64]*inode{}, byKey: map[inodeKey]*inode{}, next: RootID + 1}
}

// get returns the inode for a node id with a use reference, or nil.
func (s *inodeStore) get(id uint64) *inode {
	s.mu.Lock()
	i := s.byID[id]
	if i != nil {
		i.refs.Add(1)
	}
	s.mu.Unlock()
	return i
}

// ref adds a guest reference to the inode with the given key, if known,
// and returns it with a use reference too, taken under the same lock: a
// FORGET that comes right after (the guest may name a node id before it
// is told it) can take the node id away but not the inode from under the
// request.
func (s *inodeStore) ref(k inodeKey) *inode {
	s.mu.Lock()
	i := s.byKey[k]
	if i != nil {
		i.lookups++
		i.refs.Add(1)
	}
	s.mu.Unlock()
	return i
}

// insert adds a new inode held by fd (or, when fd is -1, by the file handle
// fileHandle on mount m), or, if another request got there first, references the
// existing one and closes fd. It returns the inode, with a use reference
// (as ref), and whether it is new.
//
// A handle-backed inode with the same key but another handle is a file
// deleted on the host whose inode number was reused (no descriptor held
// it): the new inode takes its place in byKey, and the old one stays
// reachable by node id only, until the guest forgets it.
func (s *inodeStore) insert(k inodeKey, fd int, fileHandle []byte, m *mount, mode uint32) (*inode, bool) {
	s.mu.Lock()
	if i := s.byKey[k]; i != nil && (fileHandle == nil || i.fileHandle == nil || bytes.Equal(i.fileHandle, fileHandle)) {
		i.lookups++
		i.refs.Add(1)
		s.mu.Unlock()
		if fd >= 0 {
			unix.Close(fd)
		}
		return i, false
	}
	i := &inode{id: s.next, key: k, fd: fd, fileHandle: fileHandle, mnt: m, mode: mode & unix.S_IFMT, lookups: 1}
	i.refs.Store(2) // the table's and the caller's
	s.next++
	s.byID[i.id] = i
	s.byKey[k] = i
	s.mu.Unlock()
	return i, true
}

// setRoot installs the root inode, which is never forgotten.
func (s *inodeStore) setRoot(k inodeKey, fd int, mode uint32) {
	i := &inode{id: RootID, key: k, fd: fd, mode: mode & unix.S_IFMT, lookups: 1 << 62}
	i.refs.Store(1)
	s.byID[RootID] = i
	s.byKey[k] = i
}

// forget drops n guest references.
func (s *inodeStore) forget(id, n uint64) {
	if id == RootID {
		return
	}
	s.mu.Lock()
	i := s.byID[id]
	if i == nil {
		s.mu.Unlock()
		return
	}
	if n >= i.lookups {
		i.lookups = 0
		delete(s.byID, id)
		if s.byKey[i.key] == i {
			delete(s.byKey, i.key)
		}
	} else {
		i.lookups -= n
		i = nil
	}
	s.mu.Unlock()
	if i != nil {
		i.put()
	}
}

// clear forgets every inode but the root.
func (s *inodeStore) clear() {
	s.mu.Lock()
	var gone []*inode
	for id, i := range s.byID {
		if id == RootID {
			continue
		}
		gone = append(gone, i)
		delete(s.byID, id)
		if s.byKey[i.key] == i {
			delete(s.byKey, i.key)
		}
	}
	s.mu.Unlock()
	for _, i := range gone {
		i.put()
	}
}

// count returns how many inodes the table holds.
func (s *inodeStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// newInode adds the inode that the O_PATH descriptor fd (stat'ed into st)
// holds, or references the existing one; fd is taken over. The inode
// comes with a use reference, for the caller to put.
func (fs *FS) newInode(fd int, st *unix.Statx_t) (*inode, syscall.Errno) {
	if e := fs.inodeRoom(); e != 0 {
		unix.Close(fd)
		return nil, e
	}
	k, mode := keyOf(st), uint32(st.Mode)
	if fs.fileHandleMode == FileHandlesNever {
		i, _ := fs.inodes.insert(k, fd, nil, nil, mode)
		return i, 0
	}
	fileHandle, m, e := fs.fileHandleOf(fd, st)
	if e != 0 {
		if fs.fileHandleMode == FileHandlesMandatory {
			unix.Close(fd)
			return nil, e
		}
		i, _ := fs.inodes.insert(k, fd, nil, nil, mode)
		return i, 0
	}
	i, fresh := fs.inodes.insert(k, -1, fileHandle, m, mode)
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
