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

// get returns the open file of fh with a use reference, or nil.
func (t *openFileTable) get(fh uint64) *openFile {
	t.mu.Lock()
	f := t.m[fh]
	if f != nil {
		f.refs.Add(1)
	}
	t.mu.Unlock()
	return f
}

// remove drops fh from the table.
func (t *openFileTable) remove(fh uint64) {
	t.mu.Lock()
	f := t.m[fh]
	delete(t.m, fh)
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

// openFile returns the open file or directory fh, with a use reference.
func (fs *FS) openFile(fh uint64) (*openFile, syscall.Errno) {
	f := fs.openFiles.get(fh)
	if f == nil {
		return nil, syscall.EBADF
	}
	return f, 0
}

// file returns the open regular file fh, with a use reference.
func (fs *FS) file(fh uint64) (*openFile, syscall.Errno) {
	f, e := fs.openFile(fh)
	if e != 0 {
		return nil, e
	}
	if f.dir != nil {
		f.put()
		return nil, syscall.EISDIR
	}
	return f, 0
}
