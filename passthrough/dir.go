package passthrough

import (
	"encoding/binary"
	"sync"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

const dirBufSize = 8 << 10

// dirStream is the read position of an open directory: getdents64 output
// not yet sent to the guest, and the cookie that follows it.
type dirStream struct {
	mu     sync.Mutex
	buf    []byte
	start  int    // first unsent byte of buf
	end    int    // bytes of buf filled
	offset uint64 // cookie of the next entry to send
	eof    bool
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
	fd, e := fs.openInode(i, directory, unix.O_RDONLY)
	if e != 0 {
		return e
	}
	i.refs.Add(1)
	out.Fh = fs.handles.add(&handle{fd: fd, ino: i, dir: &dirStream{buf: make([]byte, dirBufSize)}})
	out.OpenFlags = fs.dirOpenFlags()
	return 0
}

// ReadDir implements fuse.FileSystem.
func (fs *FS) ReadDir(in *gofuse.ReadIn, out *fuse.DirList) syscall.Errno {
	h, e := fs.handle(in.Fh)
	if e != 0 {
		return e
	}
	defer h.put()
	d := h.dir
	if d == nil {
		return syscall.ENOTDIR
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if in.Offset != d.offset {
		if _, err := unix.Seek(h.fd, int64(in.Offset), unix.SEEK_SET); err != nil {
			return err.(syscall.Errno)
		}
		d.start, d.end, d.offset, d.eof = 0, 0, in.Offset, false
	}
	for {
		if d.start >= d.end {
			if d.eof {
				return 0
			}
			n, err := unix.Getdents(h.fd, d.buf)
			if err != nil {
				if out.Len() > 0 {
					return 0
				}
				return err.(syscall.Errno)
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
			if e := fs.lookup(h.ino, h.fd, fuse.Name(name), &entry); e == 0 {
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
