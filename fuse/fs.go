// Package fuse decodes FUSE requests carried in virtio-fs descriptor
// chains, dispatches them to a FileSystem and encodes the replies.
//
// It sits between the rings (which hand it the readable and writable parts
// of a chain as slices of guest memory) and the host filesystem layer behind
// the FileSystem interface. Nothing in a request is trusted: lengths, names
// and offsets are checked here before a FileSystem method sees them, and
// the FileSystem checks node ids and handles against its own tables. The
// wire structs come from github.com/hanwen/go-fuse/v2/fuse; requests are
// decoded into per-worker buffers, so steady-state serving does not
// allocate.
package fuse

import (
	"encoding/binary"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Status is the outcome of a FileSystem method: 0 or an errno that goes to
// the guest unchanged.
type Status = syscall.Errno

// OK is the zero Status.
const OK Status = 0

// Name is a path component from a request. The byte after the last one is
// a NUL inside the request buffer, so Ptr can be handed to a system call.
// It is only valid during the call that receives it.
type Name []byte

// CString returns a pointer to the first byte of the NUL-terminated name.
func (n Name) CString() *byte {
	return &n[:len(n)+1][0]
}

// InitInfo tells the FileSystem what INIT negotiated.
type InitInfo struct {
	// Flags are the capabilities both sides agreed on (CAP_* bits of
	// go-fuse, Flags2 shifted into the upper 32 bits).
	Flags uint64
	// Minor is the protocol minor version in use.
	Minor uint32
}

// FileSystem is the seam between the protocol and a filesystem. Methods
// receive the decoded request (the go-fuse In structs embed the request
// header: node id, caller uid, gid and pid) and fill the reply in place.
// Implementations must be safe for concurrent use: each request queue has
// its own worker.
//
// The server checks every size a method relies on before calling it: the
// buffers it passes are never shorter than the method's contract below
// says, whatever the guest sent, so a method may take the address of their
// first byte. A method that panics nevertheless costs the guest only that
// request, answered EIO (see Worker.Serve); it must leave its own state
// consistent when it does, unlocking in defers.
type FileSystem interface {
	// Init starts a session; Destroy ends it and forgets every node id
	// and handle issued during it.
	Init(info InitInfo)
	Destroy()

	Lookup(h *fuse.InHeader, name Name, out *fuse.EntryOut) Status
	Forget(nodeID, nlookup uint64)
	GetAttr(in *fuse.GetAttrIn, out *fuse.AttrOut) Status
	SetAttr(in *fuse.SetAttrIn, out *fuse.AttrOut) Status
	// Readlink copies the target of h.NodeId into buf and returns its
	// length. buf is the guest's reply room, at least 1 byte (a guest
	// that left none is answered EINVAL without a call) and at most 4096.
	// A target that may not fit whole is refused (ENAMETOOLONG), never
	// cut short.
	Readlink(h *fuse.InHeader, buf []byte) (int, Status)
	Symlink(h *fuse.InHeader, name Name, target Name, out *fuse.EntryOut) Status
	Mknod(in *fuse.MknodIn, name Name, out *fuse.EntryOut) Status
	Mkdir(in *fuse.MkdirIn, name Name, out *fuse.EntryOut) Status
	Unlink(h *fuse.InHeader, name Name) Status
	Rmdir(h *fuse.InHeader, name Name) Status
	// Rename covers RENAME (Flags 0) and RENAME2.
	Rename(in *fuse.RenameIn, oldName, newName Name) Status
	Link(in *fuse.LinkIn, name Name, out *fuse.EntryOut) Status
	Access(in *fuse.AccessIn) Status
	StatFs(h *fuse.InHeader, out *fuse.StatfsOut) Status
	SyncFs(h *fuse.InHeader) Status

	Create(in *fuse.CreateIn, name Name, out *fuse.CreateOut) Status
	Open(in *fuse.OpenIn, out *fuse.OpenOut) Status
	// Read reads into dst, slices of guest memory, and returns the byte
	// count. No slice in dst is empty, but dst may hold no slice at all:
	// it holds in.Size bytes, or fewer when the guest's reply room or
	// MaxPages is smaller, down to none (a READ of 0 bytes, or of a reply
	// with room for the header only).
	Read(in *fuse.ReadIn, dst [][]byte) (int, Status)
	// Write writes src, slices of guest memory holding in.Size bytes.
	Write(in *fuse.WriteIn, src [][]byte) (uint32, Status)
	Flush(in *fuse.FlushIn) Status
	Fsync(in *fuse.FsyncIn) Status
	Release(in *fuse.ReleaseIn)
	Fallocate(in *fuse.FallocateIn) Status
	Lseek(in *fuse.LseekIn, out *fuse.LseekOut) Status
	CopyFileRange(in *fuse.CopyFileRangeIn) (uint32, Status)

	OpenDir(in *fuse.OpenIn, out *fuse.OpenOut) Status
	// ReadDir fills out with entries starting after in.Offset; with
	// out.Plus each entry also carries a lookup. out may have room for no
	// entry at all (the guest's size or reply room can be anything from
	// 0): entries go in only through Fits and Add, which check the room.
	ReadDir(in *fuse.ReadIn, out *DirList) Status
	ReleaseDir(in *fuse.ReleaseIn)
	FsyncDir(in *fuse.FsyncIn) Status

	// GetXAttr copies the value into dst, or with dst nil (a size
	// query) returns its size. A dst that is not nil holds at least 1
	// byte and at most 64 KiB (the guest's size, clamped to its reply
	// room); a value that does not fit is ERANGE.
	GetXAttr(h *fuse.InHeader, name Name, dst []byte) (int, Status)
	// ListXAttr copies the NUL-terminated names into dst, or with dst nil
	// (a size query) returns their size; dst is as for GetXAttr.
	ListXAttr(h *fuse.InHeader, dst []byte) (int, Status)
	SetXAttr(in *fuse.SetXAttrIn, name Name, value []byte) Status
	RemoveXAttr(h *fuse.InHeader, name Name) Status
}

// Extensions are the request extensions a node-creating request (CREATE,
// MKDIR, MKNOD or SYMLINK) carried, decoded and checked. Like a Name they
// point into the request and are valid only during the call.
type Extensions struct {
	// SecCtxName is the extended attribute that holds the new node's
	// security context (security.selinux, say), NUL-terminated like a
	// Name; nil when the request carried no context (SECURITY_CTX).
	SecCtxName Name
	// SecCtxValue is the context, as the guest's security module made it.
	SecCtxValue []byte
	// SuppGroup, when HasSuppGroup, is a group the caller belongs to as
	// a supplementary group: the parent directory's, which the guest
	// checked the caller is in (CREATE_SUPP_GROUP). The creation must run
	// with it among the caller's groups.
	SuppGroup    uint32
	HasSuppGroup bool
}

// ExtensionFileSystem is a FileSystem that also creates nodes as a request
// extension asks: with a security context and a supplementary group. The
// server calls these methods, instead of Create, Mkdir, Mknod and Symlink,
// for requests that carried extensions; it offers SECURITY_CTX and
// CREATE_SUPP_GROUP at INIT only to a FileSystem that implements them.
type ExtensionFileSystem interface {
	CreateExt(in *fuse.CreateIn, name Name, ext *Extensions, out *fuse.CreateOut) Status
	MkdirExt(in *fuse.MkdirIn, name Name, ext *Extensions, out *fuse.EntryOut) Status
	MknodExt(in *fuse.MknodIn, name Name, ext *Extensions, out *fuse.EntryOut) Status
	SymlinkExt(h *fuse.InHeader, name, target Name, ext *Extensions, out *fuse.EntryOut) Status
}

const (
	direntSize   = 24 // ino, off, namelen, type
	entryOutSize = int(unsafe.Sizeof(fuse.EntryOut{}))
)

// DirList encodes directory entries into a reply buffer.
type DirList struct {
	// Plus selects READDIRPLUS entries.
	Plus bool
	buf  []byte
	n    int
}

func (d *DirList) reset(buf []byte, plus bool) {
	d.buf, d.n, d.Plus = buf, 0, plus
}

// Len returns the encoded size so far.
func (d *DirList) Len() int { return d.n }

func (d *DirList) entrySize(nameLen int) int {
	size := direntSize + (nameLen+7)&^7
	if d.Plus {
		size += entryOutSize
	}
	return size
}

// Fits reports whether an entry with a name of nameLen bytes still fits.
// READDIRPLUS callers check it before the lookup that Add's entry needs.
func (d *DirList) Fits(nameLen int) bool {
	return d.n+d.entrySize(nameLen) <= len(d.buf)
}

// Add appends an entry; off is the cookie that resumes the listing after
// it. It returns false, adding nothing, when the entry does not fit. For
// READDIRPLUS it returns the entry's EntryOut, zeroed, for the caller to
// fill; leaving NodeId 0 tells the guest to skip caching it.
func (d *DirList) Add(name []byte, ino, off uint64, typ uint32) (*fuse.EntryOut, bool) {
	size := d.entrySize(len(name))
	if d.n+size > len(d.buf) {
		return nil, false
	}
	b := d.buf[d.n : d.n+size]
	clear(b)
	var eo *fuse.EntryOut
	if d.Plus {
		eo = (*fuse.EntryOut)(unsafe.Pointer(&b[0]))
		b = b[entryOutSize:]
	}
	binary.LittleEndian.PutUint64(b[0:], ino)
	binary.LittleEndian.PutUint64(b[8:], off)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(name)))
	binary.LittleEndian.PutUint32(b[20:], typ)
	copy(b[direntSize:], name)
	d.n += size
	return eo, true
}

// NewDirList returns a list that encodes into buf.
func NewDirList(buf []byte, plus bool) DirList {
	var d DirList
	d.reset(buf, plus)
	return d
}

// WalkDirList decodes an encoded listing, calling fn with each entry's
// name, resume cookie and (for READDIRPLUS) entry. It stops at the first
// malformed entry.
func WalkDirList(buf []byte, plus bool, fn func(name string, off uint64, e *fuse.EntryOut)) {
	for len(buf) > 0 {
		var eo *fuse.EntryOut
		if plus {
			if len(buf) < entryOutSize {
				return
			}
			eo = (*fuse.EntryOut)(unsafe.Pointer(&buf[0]))
			buf = buf[entryOutSize:]
		}
		if len(buf) < direntSize {
			return
		}
		off := binary.LittleEndian.Uint64(buf[8:])
		n := int(binary.LittleEndian.Uint32(buf[16:]))
		size := direntSize + (n+7)&^7
		if n > len(buf)-direntSize || size > len(buf) {
			return
		}
		fn(string(buf[direntSize:direntSize+n]), off, eo)
		buf = buf[size:]
	}
}
