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

// FileSystem is the seam between the protocol and a filesystem: the
// server decodes a request, calls one method and encodes its reply.
// Methods receive the decoded request (the go-fuse In structs embed the
// request header) and fill the reply in place. What follows holds for
// every method; each method's comment says what is particular to it.
//
// # Concurrency
//
// Implementations must be safe for concurrent use. Each request queue has
// its own worker (or a pool of workers serves them all, and assistants
// serve long chains), so any two methods may run at once: on the same node
// id, on the same handle, and alongside a Forget of that node or a Release
// of that handle, in whatever order the guest's queues deliver them. Init
// and Destroy are serialised with each other, not with the rest: requests
// of an ending session may still be inside a method when Destroy runs, and
// must finish safely (failing, typically) rather than touch freed state.
// Nothing cancels a method (INTERRUPT is dropped without reaching the
// FileSystem), and while it runs its worker serves nothing else, so no
// method may wait for something only the guest can bring about.
//
// # Credentials
//
// The header's Caller holds the guest task's fsuid and fsgid (Uid, Gid;
// for ACCESS its real ids) and its thread-group id (Pid), all in the
// guest's namespaces: guest ids, which the implementation translates (or
// not) to host ids itself, and a pid that means nothing on the host. The
// server passes them on unchecked. A Linux guest checks permissions itself
// (virtio-fs mounts with default_permissions), so the ids serve to give
// what a request creates its owner, not to decide what a request may do:
// a guest can put any ids there, 0 included, and requests the guest
// kernel makes on its own (writeback WRITEs, RELEASE) carry those of
// whichever task happened to cause them. Whatever the ids, a method acts
// only beneath the shared directory. Forget gets no header.
//
// # Arguments
//
// Nothing a method receives is trusted beyond what the server checked. The
// server checks:
//   - sizes: every fixed argument struct is whole (a shorter request is
//     answered EINVAL without a call), and every buffer a method fills is
//     at least as large as its contract below says (see Serve), so a
//     method may take the address of its first byte;
//   - names (a Name of a LOOKUP, MKNOD, MKDIR, SYMLINK, UNLINK, RMDIR,
//     RENAME, LINK or CREATE): 1 to MaxNameLen bytes, no '/', neither "."
//     nor "..", with a NUL after the last byte (checkName);
//   - xattr names: 1 to MaxNameLen bytes, anything but NUL (EINVAL or
//     ERANGE otherwise).
//
// It checks nothing else: node ids (the header's NodeId and any other in
// the In struct) and handles may be unknown, forgotten, of the wrong type
// or from an ended session; offsets, sizes, flags, modes and cookies are
// the guest's. A node id or handle the implementation did not issue, or no
// longer holds, is an error (passthrough answers EBADF). The In structs,
// headers and names are copies in the worker's buffer, and reply buffers
// are the worker's too: all are valid only during the call, and a method
// keeps no pointer into them. READ and WRITE data are guest memory (see
// Read and Write).
//
// # Replies and errors
//
// A fixed-size reply (an EntryOut, AttrOut, OpenOut, CreateOut,
// StatfsOut or LseekOut) is cleared to zero before the call. A method that
// returns an errno has its reply body discarded: the guest gets only the
// errno, unchanged, so a failing method must leave nothing behind that the
// reply would have told the guest about (a lookup, a handle, a created
// file). The server remembers no errno: ENOSYS is passed on like any
// other, and it is the guest that may stop sending the request (Linux
// does, for FLUSH, FSYNC, FSYNCDIR, ACCESS, CREATE, RENAME2 with flags,
// the four xattr requests, FALLOCATE, LSEEK, COPY_FILE_RANGE and SYNCFS;
// each method's comment says what it falls back to). A method that panics
// nevertheless costs the guest only that request, answered EIO (see
// Worker.Serve); it must leave its own state consistent when it does,
// unlocking in defers.
//
// # Node ids and lookup counts
//
// A node id names an inode for the guest. Node id 1 (FUSE_ROOT_ID) is the
// shared directory: known without a lookup, never forgotten. Every other
// node id is issued in an entry reply, and each successful entry reply
// (Lookup, Create, Mknod, Mkdir, Symlink, Link, and every ReadDir entry
// with a non-zero NodeId) adds one to that inode's lookup count, whether
// the node id is new or one the guest already holds. Forget subtracts;
// when the count reaches 0 the guest no longer knows the node id and the
// implementation may drop it, and what it holds on the host, at once.
// Requests that still name it then fail. A dropped node id should not be
// issued again for another inode, since a request naming the old one may
// still be on its way. Unlink, Rmdir and Rename change no count: a node
// id stays valid, following its inode, until forgotten.
//
// # Handles
//
// Open, OpenDir and Create return a handle (Fh) that the guest passes back
// in READ, WRITE, FLUSH, FSYNC, FALLOCATE, LSEEK, COPY_FILE_RANGE, GETATTR
// and SETATTR (when flagged), READDIR, FSYNCDIR, and finally RELEASE or
// RELEASEDIR, after which it is dead. A handle is the implementation's to
// give meaning to; it stays usable after its node id is forgotten, until
// released, and like a node id should not be reused. Destroy kills every
// handle and every node id but the root's.
//
// Every request that names a handle also names a node id (the header's;
// for COPY_FILE_RANGE's destination, NodeIdOut), and Linux always sends a
// handle with the node id it was opened on. The server checks neither,
// yet vets some requests by the node id alone (the DAX window's check of
// the new size of a WRITE, FALLOCATE, SETATTR or COPY_FILE_RANGE), so the
// implementation must refuse (EBADF) a handle not opened on the node id
// that comes with it, and one of the other kind: a directory handle
// (OpenDir's) in READ, WRITE, FLUSH, FSYNC, FALLOCATE, LSEEK,
// COPY_FILE_RANGE or RELEASE, a file handle in READDIR, FSYNCDIR or
// RELEASEDIR (GETATTR and SETATTR take either). A RELEASE or RELEASEDIR so
// refused releases nothing.
type FileSystem interface {
	// Init starts a session with what INIT negotiated: once per session,
	// before any other method of it (requests before a successful INIT
	// are answered EIO without a call). A session restored in a live
	// migration starts with Init too, with no INIT request. Init cannot
	// fail; if it panics the session stays down and INIT is answered
	// EIO.
	Init(info InitInfo)
	// Destroy ends the session: on DESTROY, on a device reset or when the
	// front-end goes away (Server.Reset), and before the Init of an INIT
	// that came without a DESTROY; at most once after each Init. It
	// forgets every node id but the root's and kills every handle issued
	// during the session, whatever their lookup counts; requests of the
	// session may still be running (see Concurrency) and must fail, not
	// reach anything freed. DESTROY is answered OK.
	Destroy()

	// Lookup serves LOOKUP: it resolves name, a checked single component,
	// in the directory h.NodeId and fills out with the entry: NodeId,
	// Generation, the entry and attribute validity and Attr. On success
	// the inode's lookup count goes up by one. A name that does not exist
	// is ENOENT (an entry with NodeId 0 would also do: a negative entry
	// the guest caches for EntryValid, adding no lookup); a parent that
	// is not a directory ENOTDIR.
	Lookup(h *fuse.InHeader, name Name, out *fuse.EntryOut) Status
	// Forget serves FORGET, and BATCH_FORGET with one call per entry (no
	// more than the request holds, whatever its count says): it takes
	// nlookup off nodeID's lookup count, and at 0 drops the node id. It
	// gets no reply, so it returns nothing and cannot fail: a node id
	// that is unknown, the root's, or holds fewer lookups than nlookup
	// (the count stops at 0) are the guest's mistakes, ignored or
	// absorbed.
	Forget(nodeID, nlookup uint64)
	// GetAttr serves GETATTR: it fills out with in.NodeId's attributes
	// and their validity. With FUSE_GETATTR_FH in in.Flags(), in.Fh() is
	// a handle the guest holds on the file (fstat): an implementation
	// may stat through it (it reaches a file whose name is gone), once it
	// checked the handle belongs to in.NodeId (see Handles).
	GetAttr(in *fuse.GetAttrIn, out *fuse.AttrOut) Status
	// SetAttr serves SETATTR: it changes what in.Valid (FATTR_*) selects
	// of in.NodeId (mode, owner, size, times; with FATTR_FH, in.Fh is a
	// handle on the file to use, checked as GetAttr's) and fills out
	// with the attributes after the change. Owner ids are guest ids. The
	// server has asked the DAX window about a new size first
	// (DAX.Extending). The changes need not be atomic: one that fails
	// after others were made may leave those made.
	SetAttr(in *fuse.SetAttrIn, out *fuse.AttrOut) Status
	// Readlink serves READLINK: it copies the target of h.NodeId into buf
	// and returns its length. buf is the guest's reply room, at least 1
	// byte (a guest that left none is answered EINVAL without a call) and
	// at most 4096. A target that may not fit whole is refused
	// (ENAMETOOLONG), never cut short; a node that is not a symlink is
	// EINVAL.
	Readlink(h *fuse.InHeader, buf []byte) (int, Status)
	// Symlink serves SYMLINK: it makes name, a checked component, in the
	// directory h.NodeId a symlink to target, and fills out with the new
	// entry, adding one lookup (see Lookup). The target is 1 to 4095
	// bytes with a NUL after them, otherwise unchecked (absolute, "..",
	// anything): it is stored, never followed by the daemon. The new node
	// belongs to the caller (see Credentials). A request that carried
	// extensions goes to SymlinkExt instead.
	Symlink(h *fuse.InHeader, name Name, target Name, out *fuse.EntryOut) Status
	// Mknod serves MKNOD: it makes name in the directory in.NodeId a node
	// of in.Mode (type and permission bits: a regular file when the guest
	// does not use CREATE, a fifo, socket or device) with device number
	// in.Rdev (the kernel's 32-bit encoding), owned by the caller, and
	// fills out with the entry, adding one lookup. Without DONT_MASK the
	// guest applied in.Umask to in.Mode already; with it, in.Umask is
	// still to apply (or a default ACL instead). A device node made here
	// must never be opened through the share as a device. Extensions:
	// MknodExt.
	Mknod(in *fuse.MknodIn, name Name, out *fuse.EntryOut) Status
	// Mkdir serves MKDIR: as Mknod, for a directory of permission bits
	// in.Mode. Extensions: MkdirExt.
	Mkdir(in *fuse.MkdirIn, name Name, out *fuse.EntryOut) Status
	// Unlink serves UNLINK: it removes name, a checked component, from
	// the directory h.NodeId, which must not name a directory (EISDIR).
	// Lookup counts do not change: the node id of what was removed stays
	// valid (an open file stays readable) until forgotten.
	Unlink(h *fuse.InHeader, name Name) Status
	// Rmdir serves RMDIR: as Unlink, for an empty directory (ENOTDIR,
	// ENOTEMPTY otherwise).
	Rmdir(h *fuse.InHeader, name Name) Status
	// Rename covers RENAME and RENAME2: it moves oldName in the directory
	// in.NodeId to newName in the directory in.Newdir, both checked
	// components. For RENAME the server widens the request to RENAME2's
	// layout with in.Flags 0; for RENAME2 in.Flags is the guest's, to be
	// checked (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT; EINVAL
	// for other bits). Lookup counts do not change: node ids follow their
	// inodes, and one that was replaced stays valid until forgotten.
	// ENOSYS makes Linux refuse every later rename with flags (EINVAL).
	Rename(in *fuse.RenameIn, oldName, newName Name) Status
	// Link serves LINK: it makes name, a checked component, in the
	// directory in.NodeId a new name of in.Oldnodeid's inode (not a
	// directory: EPERM), and fills out with the entry for it, adding one
	// lookup to that inode.
	Link(in *fuse.LinkIn, name Name, out *fuse.EntryOut) Status
	// Access serves ACCESS: whether the caller (in.Uid and in.Gid, the
	// task's real ids) may access in.NodeId as in.Mask (R_OK, W_OK, X_OK,
	// or F_OK) says: OK or EACCES. A Linux virtio-fs guest checks
	// permissions itself and does not normally send it. ENOSYS makes
	// Linux grant every later access check that would have asked.
	Access(in *fuse.AccessIn) Status
	// StatFs serves STATFS: it fills out with the statistics of the host
	// filesystem that h.NodeId is on.
	StatFs(h *fuse.InHeader, out *fuse.StatfsOut) Status
	// SyncFs serves SYNCFS: it writes back the host filesystem that
	// h.NodeId is on (the guest's syncfs(2) of the share or of one of its
	// submounts). ENOSYS makes Linux skip it from then on.
	SyncFs(h *fuse.InHeader) Status

	// Create serves CREATE: it opens name, a checked component, in the
	// directory in.NodeId with the open flags in.Flags, creating it as a
	// regular file of in.Mode owned by the caller if it does not exist
	// (umask as for Mknod; with O_EXCL an existing name is EEXIST), and
	// fills out with the entry, adding one lookup, and with a handle as
	// Open does (in.OpenFlags are Open's in.Mode). It does both or
	// neither: when it fails after creating the file, the file goes
	// again and no lookup or handle is left. ENOSYS makes Linux use Mknod
	// and Open from then on. Extensions: CreateExt.
	Create(in *fuse.CreateIn, name Name, out *fuse.CreateOut) Status
	// Open serves OPEN: it opens in.NodeId (not a directory: EISDIR) with
	// the guest's open flags in.Flags (O_CREAT and O_EXCL are the guest's
	// to handle; O_TRUNC comes with ATOMIC_O_TRUNC) and in.Mode's OPEN_*
	// flags, and fills out.Fh with a new handle and out.OpenFlags with
	// FOPEN_* flags. The handle is the implementation's until Release:
	// the server hands it back on the requests listed under Handles,
	// unchecked. Open changes no lookup count. Flags that would change
	// what the open does (O_PATH, O_DIRECTORY, O_TMPFILE, O_CREAT) are
	// not to be passed on blindly, and only a regular file may be opened
	// (a device node or fifo in the share must not open as one).
	Open(in *fuse.OpenIn, out *fuse.OpenOut) Status
	// Read serves READ: it reads from handle in.Fh at in.Offset (the
	// guest's; it may be negative as int64) into dst, slices of guest
	// memory, and returns the byte count, at most the bytes dst holds; a
	// short count is end of file or a short read. No slice in dst is
	// empty, but dst may hold no slice at all: it holds in.Size bytes,
	// or fewer when the guest's reply room or MaxPages is smaller, down
	// to none (a READ of 0 bytes, or of a reply with room for the header
	// only). The guest can change that memory while the method runs;
	// data goes into it and is never read back. in.Fh must be a file
	// handle of in.NodeId (see Handles).
	Read(in *fuse.ReadIn, dst [][]byte) (int, Status)
	// Write serves WRITE: it writes src, slices of guest memory holding
	// in.Size bytes (the server checked the request carries them and
	// that in.Size is at most MaxWrite), to handle in.Fh at in.Offset,
	// and returns the count written (the server puts it in the reply).
	// The guest can change src while the method runs: it is moved, never
	// parsed or checked and then used. in.WriteFlags may ask to clear
	// setuid and setgid bits (WRITE_KILL_SUIDGID). The server has asked
	// the DAX window about the new end of in.NodeId's file first
	// (DAX.Extending): that is why in.Fh must be a file handle of
	// in.NodeId (see Handles).
	Write(in *fuse.WriteIn, src [][]byte) (uint32, Status)
	// Flush serves FLUSH, which the guest sends at every close(2) of a
	// descriptor of handle in.Fh (so possibly many times, and without
	// writeback caching not at all when Open set FOPEN_NOFLUSH): its
	// error is close(2)'s. ENOSYS makes
	// Linux stop sending it (every close then succeeds).
	Flush(in *fuse.FlushIn) Status
	// Fsync serves FSYNC: it writes handle in.Fh's file back to storage,
	// only its data when in.FsyncFlags has bit 0 (fdatasync). ENOSYS
	// makes Linux treat every later fsync as done.
	Fsync(in *fuse.FsyncIn) Status
	// Release serves RELEASE: the guest closed the last descriptor of
	// handle in.Fh, which is dead from now on (a request still running
	// with it may finish). The server answers OK whatever happens, so
	// Release returns nothing. A handle that is unknown or already
	// released is the guest's mistake, ignored; as handles are not reused
	// it cannot kill another. Nor may one of another node or kind (see
	// Handles): that one is left open, for its own RELEASE.
	Release(in *fuse.ReleaseIn)
	// Fallocate serves FALLOCATE: fallocate(2) on handle in.Fh with the
	// guest's in.Mode, in.Offset and in.Length. The server has asked the
	// DAX window about the new end of in.NodeId's file first, unless the
	// mode keeps the size. ENOSYS makes Linux answer every later
	// fallocate EOPNOTSUPP.
	Fallocate(in *fuse.FallocateIn) Status
	// Lseek serves LSEEK (Linux sends it for SEEK_DATA and SEEK_HOLE):
	// it seeks handle in.Fh to in.Offset as in.Whence says and fills
	// out.Offset with the result. ENOSYS makes Linux seek by itself from
	// then on (no holes).
	Lseek(in *fuse.LseekIn, out *fuse.LseekOut) Status
	// CopyFileRange serves COPY_FILE_RANGE: it copies up to in.Len bytes
	// from handle in.FhIn at in.OffIn to handle in.FhOut (of node
	// in.NodeIdOut) at in.OffOut and returns the count copied, which must
	// fit 32 bits: in.Len is 64-bit and the guest's, so a long copy is
	// cut short. The server has asked the DAX window about the new end
	// of in.NodeIdOut's file first, so in.FhOut must be a file handle of
	// in.NodeIdOut, as in.FhIn of in.NodeId (see Handles). ENOSYS makes
	// Linux copy by other means from then on.
	CopyFileRange(in *fuse.CopyFileRangeIn) (uint32, Status)

	// OpenDir serves OPENDIR: as Open, for a directory (ENOTDIR
	// otherwise), with a handle for ReadDir, FsyncDir and ReleaseDir.
	OpenDir(in *fuse.OpenIn, out *fuse.OpenOut) Status
	// ReadDir serves READDIR and, with out.Plus, READDIRPLUS: it fills out
	// with the entries of directory handle in.Fh that follow the cookie
	// in.Offset (0: from the start; otherwise the off of an entry it
	// added before, or any value a guest makes up). Returning OK with no
	// entry is the end of the directory. out may have room for no entry
	// at all (the guest's size or reply room can be anything from 0):
	// entries go in only through Fits and Add, which check the room, and
	// one that does not fit ends the listing. With out.Plus each entry
	// carries an entry reply: filling its EntryOut with a NodeId adds one
	// lookup, exactly as Lookup; one left at NodeId 0 adds none. "." and
	// ".." must be left at 0 (Linux ignores their entries and would
	// never forget the lookup), and so may an entry whose lookup failed. An error discards every entry
	// added, so it may be returned only while none has been (their
	// lookups would be counted and never forgotten); past that, stop and
	// return OK.
	ReadDir(in *fuse.ReadIn, out *DirList) Status
	// ReleaseDir serves RELEASEDIR: as Release, for a directory handle.
	ReleaseDir(in *fuse.ReleaseIn)
	// FsyncDir serves FSYNCDIR: as Fsync, for a directory handle. ENOSYS
	// makes Linux treat every later one as done.
	FsyncDir(in *fuse.FsyncIn) Status

	// GetXAttr serves GETXATTR: it copies the value of in.NodeId's
	// extended attribute name (a checked xattr name) into dst, or with
	// dst nil (a size query) returns its size. A dst that is not nil
	// holds at least 1 byte and at most 64 KiB (the guest's size, clamped
	// to its reply room); a value that does not fit is ERANGE, an absent
	// one ENODATA. ENOSYS from any of the four xattr methods makes Linux
	// answer that request EOPNOTSUPP from then on without asking.
	GetXAttr(h *fuse.InHeader, name Name, dst []byte) (int, Status)
	// ListXAttr serves LISTXATTR: it copies the NUL-terminated names of
	// h.NodeId's extended attributes into dst, or with dst nil (a size
	// query) returns their size; dst is as for GetXAttr.
	ListXAttr(h *fuse.InHeader, dst []byte) (int, Status)
	// SetXAttr serves SETXATTR: it sets in.NodeId's extended attribute
	// name to value (at most 64 KiB, checked; a copy, stable during the
	// call). in.Flags are setxattr(2)'s (XATTR_CREATE, XATTR_REPLACE;
	// other bits unchecked); in.SetXAttrFlags, 0 unless SETXATTR_EXT was
	// negotiated, may ask to clear the setgid bit (SETXATTR_ACL_KILL_SGID).
	SetXAttr(in *fuse.SetXAttrIn, name Name, value []byte) Status
	// RemoveXAttr serves REMOVEXATTR: it removes h.NodeId's extended
	// attribute name (ENODATA if absent).
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
