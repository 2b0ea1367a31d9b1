package passthrough

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
)

// Per-guest bounds. What a guest can make the daemon hold for as long as it
// likes is bounded here: the inodes it knows (MaxInodes), open files and
// directories (MaxHandles; each costs a descriptor), and the directory buffers kept between READDIRs
// (MaxKeptDirBuffers, dir.go). Past a bound the request fails with a clear
// errno and the operator is told, at most once every boundNoteEvery.

// DefaultMaxInodes is Config.MaxInodes when it is 0. An inode the guest
// knows costs a descriptor (or, with file handles, about 170 bytes) until
// the guest forgets it; a guest that looks names up and never forgets them
// would otherwise grow the table without end.
const DefaultMaxInodes = 1 << 22

// DefaultMaxHandles is Config.MaxHandles when it is 0: far more files than
// a guest's programs keep open, and with the inodes' descriptors still
// under the descriptor limit the daemon raises itself to.
const DefaultMaxHandles = 1 << 18

// boundNoteEvery is how often at most a bound's log line repeats.
const boundNoteEvery = 10 * time.Second

// boundNote rate-limits the log line of one bound.
type boundNote struct {
	next       atomic.Int64 // unix nanoseconds before which nothing is logged
	suppressed atomic.Int64 // refusals since the last line
}

// note logs msg through logf, unless a line went out less than
// boundNoteEvery ago; then the refusal is counted for the next line.
func (n *boundNote) note(logf func(string, ...any), msg string) {
	if logf == nil {
		return
	}
	now := time.Now().UnixNano()
	next := n.next.Load()
	if now < next || !n.next.CompareAndSwap(next, now+int64(boundNoteEvery)) {
		n.suppressed.Add(1)
		return
	}
	if s := n.suppressed.Swap(0); s > 0 {
		msg = fmt.Sprintf("%s (and %d more times since the last report)", msg, s)
	}
	logf("%s", msg)
}

// openFileRoom checks that the guest may open one more file or directory:
// EMFILE once it holds MaxHandles.
func (fs *FS) openFileRoom() syscall.Errno {
	if n := fs.openFiles.count(); n >= fs.maxOpenFiles {
		fs.openFileNote.note(fs.cfg.Logf, fmt.Sprintf("the guest holds %d open files and directories, the most allowed: OPEN, OPENDIR and CREATE fail with EMFILE until it releases some", n))
		return syscall.EMFILE
	}
	return 0
}

// inodeRoom checks that the guest may learn one more inode: ENFILE once
// it knows MaxInodes (LOOKUP, the creating requests and READDIRPLUS's
// entries fail until it forgets some).
func (fs *FS) inodeRoom() syscall.Errno {
	if n := fs.inodes.count(); n >= fs.maxInodes {
		fs.inodeNote.note(fs.cfg.Logf, fmt.Sprintf("the guest knows %d inodes, the most allowed: lookups of new ones fail with ENFILE until it forgets some", n))
		return syscall.ENFILE
	}
	return 0
}

// addOpenFile adds f to the open files and directories, unless the guest
// holds MaxHandles already (openFileRoom checked before the open, but
// requests on other queues may have taken the room since): then EMFILE,
// and f is the caller's to undo. It returns f's FUSE file handle.
func (fs *FS) addOpenFile(f *openFile) (uint64, syscall.Errno) {
	fh, ok := fs.openFiles.add(f, fs.maxOpenFiles)
	if !ok {
		fs.openFileNote.note(fs.cfg.Logf, fmt.Sprintf("the guest holds %d open files and directories, the most allowed: OPEN, OPENDIR and CREATE fail with EMFILE until it releases some", fs.maxOpenFiles))
		return 0, syscall.EMFILE
	}
	return fh, 0
}
