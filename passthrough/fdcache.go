// The descriptor cache: O_PATH descriptors of recently used handle-backed
// inodes (fdCache), and FS.pathFd, which gives any inode's O_PATH
// descriptor, from the inode itself, the cache or its file handle.

package passthrough

import (
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Recently used handle-backed inodes keep their O_PATH descriptors in a small
// LRU cache (fdCache) so that hot inodes (GETATTR loops, lookups beneath a
// directory) do not pay open_by_handle_at each time; its size bounds the
// descriptors it holds. Cache entries are reference counted: a request holds
// one while it uses the descriptor, and only unreferenced entries are
// evicted, so a descriptor is never closed under another request. When every
// entry is in use, a request gets a descriptor of its own, closed when it is
// done.

// DefaultHandleCacheSize is how many O_PATH descriptors of handle-backed
// inodes are kept open when Config.HandleCacheSize is zero.
const DefaultHandleCacheSize = 32

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
	fd, e := sysOpenByHandleAt(i.mnt.fd, i.fileHandle, unix.O_PATH|unix.O_NOFOLLOW)
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
