// The open-file table: the files and directories the guest holds open, by
// FUSE file handle (the fh of OPEN, OPENDIR and CREATE replies). Kernel
// file handles, which hold inodes, are filehandle.go's.

package passthrough

import (
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// openFile is an open file or directory.
type openFile struct {
	fd    int
	ino   *inode // holds a use reference while the open file lives
	dir   *dirStream
	refs  atomic.Int64
	flags uint32
}

func (f *openFile) put() {
	if f.refs.Add(-1) == 0 {
		if f.dir != nil {
			f.dir.release()
		}
		unix.Close(f.fd)
		f.ino.put()
	}
}

// openFileTable maps FUSE file handles to open files.
type openFileTable struct {
	mu   sync.Mutex
	m    map[uint64]*openFile
	next uint64
}

func newOpenFileTable() *openFileTable {
	return &openFileTable{m: map[uint64]*openFile{}, next: 1}
}

// add adds f unless the table holds max open files already; then it
// returns false and f is the caller's still.
func (t *openFileTable) add(f *openFile, max int) (uint64, bool) {
	f.refs.Store(1)
	t.mu.Lock()
	if len(t.m) >= max {
		t.mu.Unlock()
		return 0, false
	}
	fh := t.next
	t.next++
	t.m[fh] = f
	t.mu.Unlock()
	return fh, true
}

// openKind is the kind of open file a request wants: a FUSE handle is
// typed by the request that made it (OPEN and CREATE make file handles,
// OPENDIR directory handles).
type openKind uint8

const (
	anyOpen  openKind = iota // GETATTR and SETATTR: either kind
	fileOpen                 // READ, WRITE, FLUSH, FSYNC, RELEASE, ...
	dirOpen                  // READDIR(PLUS), FSYNCDIR, RELEASEDIR
)

// is reports whether f is of kind k.
func (f *openFile) is(k openKind) bool {
	switch k {
	case fileOpen:
		return f.dir == nil
	case dirOpen:
		return f.dir != nil
	}
	return true
}

// belongs reports whether f may serve a request on node id node that wants
// an open file of kind k: the guest names a handle and a node id side by
// side, and the two must belong together. The server vets a request by its
// node id (the DAX window's checks of a WRITE's or FALLOCATE's new size,
// for one), so a handle used with another node's id would act on a file
// that nothing checked. The node id is compared, not looked up: a handle
// stays usable after the guest forgot its node id, with that id (Linux
// sends every request on an open file with the node id it was opened on,
// and has one node id per inode, as the store does).
func (f *openFile) belongs(node uint64, k openKind) bool {
	return f.ino.id == node && f.is(k)
}

// get returns the open file of fh, with a use reference, if it was opened
// on node id node and is of kind k; otherwise nil.
func (t *openFileTable) get(node, fh uint64, k openKind) *openFile {
	t.mu.Lock()
	f := t.m[fh]
	if f != nil && f.belongs(node, k) {
		f.refs.Add(1)
	} else {
		f = nil
	}
	t.mu.Unlock()
	return f
}

// remove drops fh from the table if it was opened on node id node and is
// of kind k. Any other is left as it is: a RELEASE naming another node's
// handle, or a RELEASEDIR naming a file's, must not close it (its owner
// still uses it, and releases it later under its own node id).
func (t *openFileTable) remove(node, fh uint64, k openKind) {
	t.mu.Lock()
	f := t.m[fh]
	if f != nil && f.belongs(node, k) {
		delete(t.m, fh)
	} else {
		f = nil
	}
	t.mu.Unlock()
	if f != nil {
		f.put()
	}
}

// clear drops every open file.
func (t *openFileTable) clear() {
	t.mu.Lock()
	old := t.m
	t.m = map[uint64]*openFile{}
	t.mu.Unlock()
	for _, f := range old {
		f.put()
	}
}

// count returns how many open files the table holds.
func (t *openFileTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// openFile returns the open file or directory fh, with a use reference:
// EBADF unless the guest opened it on node id node as kind k (see
// belongs), as for a handle it never had or released. Every request that
// names a handle gets it here.
func (fs *FS) openFile(node, fh uint64, k openKind) (*openFile, syscall.Errno) {
	f := fs.openFiles.get(node, fh, k)
	if f == nil {
		return nil, syscall.EBADF
	}
	return f, 0
}

// file returns the open regular file fh of node id node, with a use
// reference (EBADF for a directory handle, as for another node's).
func (fs *FS) file(node, fh uint64) (*openFile, syscall.Errno) {
	return fs.openFile(node, fh, fileOpen)
}
