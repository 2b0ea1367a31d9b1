package passthrough

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

const dirBufSize = 8 << 10

// MaxKeptDirBuffers is how many open directories may keep getdents64
// output the guest has not taken yet between two READDIRs (8 KiB each).
// Past it, a directory gives its buffer back and seeks to the entry it
// stopped at, to read the rest again next time: a guest that opens many
// directories and reads a little of each costs a bounded amount of
// memory, not 8 KiB a directory.
const MaxKeptDirBuffers = 1024

// dirBufs holds the getdents64 buffers of the directories being read.
var dirBufs = sync.Pool{New: func() any { return new([dirBufSize]byte) }}

// dirStream is the read position of an open directory: getdents64 output
// not yet sent to the guest, and the cookie that follows it. It holds a
// buffer only while a READDIR runs, or between two when it has entries
// left and fewer than MaxKeptDirBuffers directories keep theirs (kept).
type dirStream struct {
	mu     sync.Mutex
	buf    []byte // nil when none is held
	start  int    // first unsent byte of buf
	end    int    // bytes of buf filled
	offset uint64 // cookie of the next entry to send
	eof    bool
	kept   *atomic.Int64 // FS.keptDirs while d keeps its buffer between READDIRs
}

// release gives d's buffer back, with the entries in it.
func (d *dirStream) release() {
	if d.buf == nil {
		return
	}
	if cap(d.buf) == dirBufSize {
		dirBufs.Put((*[dirBufSize]byte)(d.buf[:dirBufSize]))
	}
	d.buf, d.start, d.end = nil, 0, 0
	if d.kept != nil {
		d.kept.Add(-1)
		d.kept = nil
	}
}

// parkDir ends a READDIR on d (open as fd): entries left in the buffer
// stay there if d may keep it; otherwise the stream seeks back to the
// first of them and the buffer goes.
func (fs *FS) parkDir(fd int, d *dirStream) {
	if d.buf == nil {
		return
	}
	if d.start < d.end {
		if d.kept != nil {
			return
		}
		if fs.keptDirs.Add(1) <= MaxKeptDirBuffers {
			d.kept = &fs.keptDirs
			return
		}
		fs.keptDirs.Add(-1)
		if _, err := unix.Seek(fd, int64(d.offset), unix.SEEK_SET); err != nil {
			return // keep the entries (uncounted) rather than lose them
		}
		d.eof = false
	}
	d.release()
}

// OpenDir implements fuse.FileSystem.
func (fs *FS) OpenDir(in *gofuse.OpenIn, out *gofuse.OpenOut) syscall.Errno {
	i, e := fs.inode(in.NodeId)
	if e != 0 {
		return e
	}
	defer i.put()
	if !i.isDir() {
		return syscall.ENOTDIR
	}
	if e := fs.openFileRoom(); e != 0 {
		return e
	}
	fd, e := fs.openInode(i, directory, unix.O_RDONLY)
	if e != 0 {
		return e
	}
	i.refs.Add(1)
	fh, e := fs.addOpenFile(&openFile{fd: fd, ino: i, dir: &dirStream{}})
	if e != 0 {
		unix.Close(fd)
		i.put()
		return e
	}
	out.Fh = fh
	out.OpenFlags = fs.dirOpenFlags()
	return 0
}

// ReadDir implements fuse.FileSystem.
func (fs *FS) ReadDir(in *gofuse.ReadIn, out *fuse.DirList) syscall.Errno {
	f, e := fs.openFile(in.NodeId, in.Fh, dirOpen)
	if e != 0 {
		return e
	}
	defer f.put()
	d := f.dir
	d.mu.Lock()
	defer d.mu.Unlock()
	defer fs.parkDir(f.fd, d)
	if in.Offset != d.offset {
		if _, err := unix.Seek(f.fd, int64(in.Offset), unix.SEEK_SET); err != nil {
			return errnoOf(err)
		}
		d.start, d.end, d.offset, d.eof = 0, 0, in.Offset, false
	}
	if d.buf == nil {
		d.buf = dirBufs.Get().(*[dirBufSize]byte)[:]
	}
	for {
		if d.start >= d.end {
			if d.eof {
				return 0
			}
			n, err := unix.Getdents(f.fd, d.buf)
			if err != nil {
				if out.Len() > 0 {
					return 0
				}
				return errnoOf(err)
			}
			if n == 0 {
				d.eof = true
				return 0
			}
			d.start, d.end = 0, n
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		rec := d.buf[d.start:d.end]
		if len(rec) < 19 {
			d.start = d.end
			continue
		}
		ino := binary.LittleEndian.Uint64(rec[0:])
		off := binary.LittleEndian.Uint64(rec[8:])
		reclen := int(binary.LittleEndian.Uint16(rec[16:]))
		typ := uint32(rec[18])
		if reclen < 19 || reclen > len(rec) {
			d.start = d.end
			continue
		}
		name := rec[19:reclen]
		for j, c := range name {
			if c == 0 {
				name = name[:j]
				break
			}
		}
		if !out.Fits(len(name)) {
			return 0
		}
		var entry gofuse.EntryOut
		lookedUp := false
		if out.Plus && !isDot(name) {
			// The open directory serves as the parent's descriptor.
			if e := fs.lookup(f.ino, f.fd, fuse.Name(name), &entry); e == 0 {
				lookedUp = true
			}
		}
		eo, _ := out.Add(name, ino, off, typ)
		if lookedUp {
			*eo = entry
		}
		d.start += reclen
		d.offset = off
	}
}

func isDot(name []byte) bool {
	return (len(name) == 1 && name[0] == '.') || (len(name) == 2 && name[0] == '.' && name[1] == '.')
}
