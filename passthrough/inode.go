package passthrough

import (
	"bytes"
	"sync"
	"sync/atomic"

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
// as it exists (see handles.go). FS.pathFd gives a descriptor of either.
type inode struct {
	id   uint64
	key  inodeKey
	fd   int    // O_PATH descriptor; -1 when fh holds the inode
	mode uint32 // file type bits

	// With a file handle: the handle (a struct file_handle), its mount,
	// and the descriptor cache entry (guarded by mnt.cache.mu).
	fh   []byte
	mnt  *mount
	slot *fdSlot

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
// and returns it.
func (s *inodeStore) ref(k inodeKey) *inode {
	s.mu.Lock()
	i := s.byKey[k]
	if i != nil {
		i.lookups++
	}
	s.mu.Unlock()
	return i
}

// insert adds a new inode held by fd (or, when fd is -1, by the file handle
// fh on mount m), or, if another request got there first, references the
// existing one and closes fd. It returns the inode and whether it is new.
//
// A handle-backed inode with the same key but another handle is a file
// deleted on the host whose inode number was reused (no descriptor held
// it): the new inode takes its place in byKey, and the old one stays
// reachable by node id only, until the guest forgets it.
func (s *inodeStore) insert(k inodeKey, fd int, fh []byte, m *mount, mode uint32) (*inode, bool) {
	s.mu.Lock()
	if i := s.byKey[k]; i != nil && (fh == nil || i.fh == nil || bytes.Equal(i.fh, fh)) {
		i.lookups++
		s.mu.Unlock()
		if fd >= 0 {
			unix.Close(fd)
		}
		return i, false
	}
	i := &inode{id: s.next, key: k, fd: fd, fh: fh, mnt: m, mode: mode & unix.S_IFMT, lookups: 1}
	i.refs.Store(1)
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

// handle is an open file or directory.
type handle struct {
	fd    int
	ino   *inode // holds a use reference while the handle lives
	dir   *dirStream
	refs  atomic.Int64
	flags uint32
}

func (h *handle) put() {
	if h.refs.Add(-1) == 0 {
		if h.dir != nil {
			h.dir.release()
		}
		unix.Close(h.fd)
		h.ino.put()
	}
}

// handleStore maps file handles to open files.
type handleStore struct {
	mu   sync.Mutex
	m    map[uint64]*handle
	next uint64
}

func newHandleStore() *handleStore { return &handleStore{m: map[uint64]*handle{}, next: 1} }

// add adds h unless the store holds max handles already; then it returns
// false and h is the caller's still.
func (s *handleStore) add(h *handle, max int) (uint64, bool) {
	h.refs.Store(1)
	s.mu.Lock()
	if len(s.m) >= max {
		s.mu.Unlock()
		return 0, false
	}
	id := s.next
	s.next++
	s.m[id] = h
	s.mu.Unlock()
	return id, true
}

// get returns the handle with a use reference, or nil.
func (s *handleStore) get(id uint64) *handle {
	s.mu.Lock()
	h := s.m[id]
	if h != nil {
		h.refs.Add(1)
	}
	s.mu.Unlock()
	return h
}

// remove drops the handle from the table.
func (s *handleStore) remove(id uint64) {
	s.mu.Lock()
	h := s.m[id]
	delete(s.m, id)
	s.mu.Unlock()
	if h != nil {
		h.put()
	}
}

func (s *handleStore) clear() {
	s.mu.Lock()
	old := s.m
	s.m = map[uint64]*handle{}
	s.mu.Unlock()
	for _, h := range old {
		h.put()
	}
}

func (s *handleStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
