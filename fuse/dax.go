package fuse

import (
	"encoding/binary"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// What the DAX window needs around requests other than SETUPMAPPING and
// REMOVEMAPPING (see ops.go): mappings the VMM could make only up to the
// end of a file grow with the file before the guest sees the new size, a
// request that would grow a file into a page that cannot be mapped is
// refused, and in dax=inode mode each regular file's attributes say
// whether the guest maps it. None of it runs without a window; the size
// work only while some mapping is clamped (one atomic load).

// daxExtending asks the window before a request makes node's file end at
// end bytes.
func (w *Worker) daxExtending(node, end uint64) Status {
	if d := w.s.cfg.DAX; d != nil && d.Clamped() {
		return d.Extending(node, end)
	}
	return OK
}

// daxReply runs after a successful request whose reply (n bytes of body in
// w.out) carries attributes or which may have changed a file's size.
func (w *Worker) daxReply(code uint32, n int) {
	d := w.s.cfg.DAX
	grow := d.Clamped()
	inode := w.s.flags.Load()&fuse.CAP_HAS_INODE_DAX != 0
	if !grow && !inode {
		return
	}
	switch code {
	case opLookup, opCreate, opLink, opMknod:
		// CREATE's reply starts with the entry.
		e := body[fuse.EntryOut](w)
		daxAttr(d, e.NodeId, w.h.NodeId, &e.Attr, grow, inode)
	case opGetattr, opSetattr:
		daxAttr(d, w.h.NodeId, 0, &body[fuse.AttrOut](w).Attr, grow, inode)
	case opWrite, opFallocate:
		if grow {
			d.Grow(w.h.NodeId)
		}
	case opCopyFileRange:
		if grow {
			d.Grow(argsAs[fuse.CopyFileRangeIn](w).NodeIdOut)
		}
	case opReaddirplus:
		for b := w.out[outHeaderSize : outHeaderSize+n]; len(b) >= entryOutSize+direntSize; {
			e := (*fuse.EntryOut)(unsafe.Pointer(&b[0]))
			if e.NodeId != 0 {
				daxAttr(d, e.NodeId, w.h.NodeId, &e.Attr, grow, inode)
			}
			size := entryOutSize + direntSize + (int(binary.LittleEndian.Uint32(b[entryOutSize+16:]))+7)&^7
			if size > len(b) {
				break
			}
			b = b[size:]
		}
	}
}

func daxAttr(d DAX, node, parent uint64, a *fuse.Attr, grow, inode bool) {
	if grow {
		d.Grow(node)
	}
	if inode && a.Mode&syscall.S_IFMT == syscall.S_IFREG && d.InodeDAX(node, parent) {
		a.Flags |= fuse.ATTR_DAX
	}
}
