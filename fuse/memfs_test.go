package fuse

import (
	"bytes"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// memFS is an in-memory FileSystem for the protocol tests: a tree of
// directories, regular files, symlinks and special nodes.
//
// The tree (inodes reachable from the root) outlives sessions, as a host
// directory does. What the guest holds is tracked per session: the node
// table maps each node id the guest knows to its inode and lookup count,
// the handle table maps file handles to open inodes. Anything not in those
// tables is refused with EBADF. Destroy empties both.
//
// GetAttr, Lookup, Read and Write do not allocate once a node is known and
// a file has reached its size, so the allocation tests can run against it.
type memFS struct {
	mu      sync.Mutex
	root    *memNode
	nodes   map[uint64]*memNode // node id (== inode number) -> inode known to the guest
	handles map[uint64]*memHandle
	nextIno uint64
	nextFh  uint64

	// Observations for the tests.
	inits     int
	destroys  int
	syncfs    int
	fsyncs    int
	flushes   int
	lastInit  InitInfo
	lastCtx   gofuse.Caller
	lastWrite gofuse.WriteIn
	lastRead  gofuse.ReadIn
	lastSet   gofuse.SetAttrIn
	// lastRename is the RenameIn of the last Rename call.
	lastRename gofuse.RenameIn
	// exts are the extensions of every *Ext call, copied.
	exts []memExt
}

// memExt is a copy of the Extensions a *Ext method received.
type memExt struct {
	op           string
	secName      string
	hasSecCtx    bool
	secValue     []byte
	suppGroup    uint32
	hasSuppGroup bool
}

type memNode struct {
	ino     uint64
	attr    gofuse.Attr
	lookups uint64 // references the guest holds (0 when not in nodes)
	data    []byte // regular file contents
	target  []byte // symlink target

	// Directories.
	parent     *memNode
	entries    []*memDirent // in cookie order
	byName     map[string]*memDirent
	nextCookie uint64

	xattrs map[string][]byte
}

type memDirent struct {
	name   string
	node   *memNode
	cookie uint64 // READDIR offset that resumes after this entry
}

type memHandle struct {
	node  *memNode
	flags uint32 // open flags
	dir   bool
}

const (
	// memMaxFileSize bounds files (EFBIG beyond), so that fuzzed offsets
	// cannot make the tests allocate gigabytes.
	memMaxFileSize = 16 << 20
	memBlockSize   = 4096
	// Cookies 1 and 2 are "." and "..".
	firstCookie = 3
)

func newMemFS() *memFS {
	fs := &memFS{nextIno: gofuse.FUSE_ROOT_ID, nextFh: 1}
	fs.root = fs.newNode(syscall.S_IFDIR|0o755, nil)
	fs.root.parent = fs.root
	fs.root.attr.Nlink = 2
	fs.resetTables()
	return fs
}

func (fs *memFS) resetTables() {
	fs.nodes = map[uint64]*memNode{gofuse.FUSE_ROOT_ID: fs.root}
	fs.root.lookups = 1
	fs.handles = map[uint64]*memHandle{}
}

func (fs *memFS) newNode(mode uint32, parent *memNode) *memNode {
	n := &memNode{ino: fs.nextIno}
	fs.nextIno++
	n.attr.Ino = n.ino
	n.attr.Mode = mode
	n.attr.Nlink = 1
	n.attr.Blksize = memBlockSize
	n.attr.Mtime, n.attr.Atime, n.attr.Ctime = 1000, 1000, 1000
	if mode&syscall.S_IFMT == syscall.S_IFDIR {
		n.attr.Nlink = 2
		n.parent = parent
		n.byName = map[string]*memDirent{}
		n.nextCookie = firstCookie
	}
	return n
}

func isDir(n *memNode) bool { return n.attr.Mode&syscall.S_IFMT == syscall.S_IFDIR }

// node returns the inode of a node id the guest holds.
func (fs *memFS) node(id uint64) (*memNode, Status) {
	n, ok := fs.nodes[id]
	if !ok {
		return nil, syscall.EBADF
	}
	return n, OK
}

func (fs *memFS) dir(id uint64) (*memNode, Status) {
	n, st := fs.node(id)
	if st != OK {
		return nil, st
	}
	if !isDir(n) {
		return nil, syscall.ENOTDIR
	}
	return n, OK
}

// handle returns the open handle fh, which must be of kind dir and opened
// on node id node (see FileSystem's Handles).
func (fs *memFS) handle(node, fh uint64, dir bool) (*memHandle, Status) {
	h, ok := fs.handles[fh]
	if !ok || h.dir != dir || h.node.ino != node {
		return nil, syscall.EBADF
	}
	return h, OK
}

// fillAttr updates the derived attributes of n.
func (n *memNode) fillAttr(a *gofuse.Attr) {
	switch n.attr.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		n.attr.Size = uint64(len(n.data))
	case syscall.S_IFLNK:
		n.attr.Size = uint64(len(n.target))
	case syscall.S_IFDIR:
		n.attr.Size = uint64(len(n.entries))
	}
	n.attr.Blocks = (n.attr.Size + 511) / 512
	*a = n.attr
}

// ref gives the guest one more reference to n and describes it in out.
func (fs *memFS) ref(n *memNode, out *gofuse.EntryOut) {
	if n.lookups == 0 {
		fs.nodes[n.ino] = n
	}
	n.lookups++
	out.NodeId = n.ino
	out.Generation = 1
	out.EntryValid = 1
	out.AttrValid = 1
	n.fillAttr(&out.Attr)
}

func (fs *memFS) link(d *memNode, name string, n *memNode) {
	e := &memDirent{name: name, node: n, cookie: d.nextCookie}
	d.nextCookie++
	d.entries = append(d.entries, e)
	d.byName[name] = e
}

func (fs *memFS) unlinkEntry(d *memNode, e *memDirent) {
	delete(d.byName, e.name)
	for i, x := range d.entries {
		if x == e {
			d.entries = append(d.entries[:i], d.entries[i+1:]...)
			break
		}
	}
}

// create adds a new inode named name under parent.
func (fs *memFS) create(parentID uint64, name Name, mode uint32, caller gofuse.Caller) (*memNode, Status) {
	d, st := fs.dir(parentID)
	if st != OK {
		return nil, st
	}
	if _, ok := d.byName[string(name)]; ok {
		return nil, syscall.EEXIST
	}
	n := fs.newNode(mode, d)
	n.attr.Uid, n.attr.Gid = caller.Uid, caller.Gid
	fs.link(d, string(name), n)
	if isDir(n) {
		d.attr.Nlink++
	}
	return n, OK
}

// --- FileSystem ---

func (fs *memFS) Init(info InitInfo) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.inits++
	fs.lastInit = info
}

func (fs *memFS) Destroy() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.destroys++
	for _, n := range fs.nodes {
		n.lookups = 0
	}
	fs.resetTables()
}

func (fs *memFS) Lookup(h *gofuse.InHeader, name Name, out *gofuse.EntryOut) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != OK {
		return st
	}
	e, ok := d.byName[string(name)]
	if !ok {
		return syscall.ENOENT
	}
	fs.ref(e.node, out)
	return OK
}

func (fs *memFS) Forget(nodeID, nlookup uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, ok := fs.nodes[nodeID]
	if !ok || nodeID == gofuse.FUSE_ROOT_ID {
		return
	}
	n.lookups -= min(nlookup, n.lookups)
	if n.lookups == 0 {
		delete(fs.nodes, nodeID)
	}
}

func (fs *memFS) GetAttr(in *gofuse.GetAttrIn, out *gofuse.AttrOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.lastCtx = in.Caller
	var n *memNode
	if in.Flags()&gofuse.FUSE_GETATTR_FH != 0 {
		h, ok := fs.handles[in.Fh()]
		if !ok || h.node.ino != in.NodeId {
			return syscall.EBADF
		}
		n = h.node
	} else {
		var st Status
		if n, st = fs.node(in.NodeId); st != OK {
			return st
		}
	}
	out.AttrValid = 1
	n.fillAttr(&out.Attr)
	return OK
}

func (fs *memFS) SetAttr(in *gofuse.SetAttrIn, out *gofuse.AttrOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.lastSet = *in
	n, st := fs.node(in.NodeId)
	if st != OK {
		return st
	}
	if fh, ok := in.GetFh(); ok {
		if _, st := fs.handle(in.NodeId, fh, false); st != OK {
			return st
		}
	}
	if size, ok := in.GetSize(); ok {
		if isDir(n) {
			return syscall.EISDIR
		}
		if n.attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
			return syscall.EINVAL
		}
		if size > memMaxFileSize {
			return syscall.EFBIG
		}
		n.data = resize(n.data, int(size))
	}
	if mode, ok := in.GetMode(); ok {
		n.attr.Mode = n.attr.Mode&syscall.S_IFMT | mode
	}
	if uid, ok := in.GetUID(); ok {
		n.attr.Uid = uid
	}
	if gid, ok := in.GetGID(); ok {
		n.attr.Gid = gid
	}
	if in.Valid&gofuse.FATTR_ATIME != 0 {
		n.attr.Atime, n.attr.Atimensec = in.Atime, in.Atimensec
	}
	if in.Valid&gofuse.FATTR_MTIME != 0 {
		n.attr.Mtime, n.attr.Mtimensec = in.Mtime, in.Mtimensec
	}
	out.AttrValid = 1
	n.fillAttr(&out.Attr)
	return OK
}

// resize returns b with length size, zero-filling any extension.
func resize(b []byte, size int) []byte {
	if size <= len(b) {
		return b[:size]
	}
	if size <= cap(b) {
		old := len(b)
		b = b[:size]
		clear(b[old:])
		return b
	}
	nb := make([]byte, size, size+size/4)
	copy(nb, b)
	return nb
}

func (fs *memFS) Readlink(h *gofuse.InHeader, buf []byte) (int, Status) {
	mustRoom("Readlink", buf)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(h.NodeId)
	if st != OK {
		return 0, st
	}
	if n.attr.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		return 0, syscall.EINVAL
	}
	if len(n.target) > len(buf) {
		return 0, syscall.ENAMETOOLONG
	}
	return copy(buf, n.target), OK
}

func (fs *memFS) Symlink(h *gofuse.InHeader, name Name, target Name, out *gofuse.EntryOut) Status {
	mustCName(name)
	mustCName(target)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.create(h.NodeId, name, syscall.S_IFLNK|0o777, h.Caller)
	if st != OK {
		return st
	}
	n.target = bytes.Clone(target)
	fs.ref(n, out)
	return OK
}

func (fs *memFS) Mknod(in *gofuse.MknodIn, name Name, out *gofuse.EntryOut) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	switch in.Mode & syscall.S_IFMT {
	case syscall.S_IFREG, syscall.S_IFIFO, syscall.S_IFSOCK, syscall.S_IFCHR, syscall.S_IFBLK:
	default:
		return syscall.EINVAL
	}
	n, st := fs.create(in.NodeId, name, in.Mode&^in.Umask, in.Caller)
	if st != OK {
		return st
	}
	n.attr.Rdev = in.Rdev
	fs.ref(n, out)
	return OK
}

func (fs *memFS) Mkdir(in *gofuse.MkdirIn, name Name, out *gofuse.EntryOut) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.create(in.NodeId, name, syscall.S_IFDIR|(in.Mode&0o7777&^in.Umask), in.Caller)
	if st != OK {
		return st
	}
	fs.ref(n, out)
	return OK
}

// --- ExtensionFileSystem ---

// noteExt records ext for the tests; fs.mu is held.
func (fs *memFS) noteExt(op string, ext *Extensions) {
	if ext == nil {
		panic(op + " with nil extensions")
	}
	if ext.SecCtxName == nil && !ext.HasSuppGroup {
		panic(op + " with empty extensions: the plain method should have been called")
	}
	m := memExt{op: op, suppGroup: ext.SuppGroup, hasSuppGroup: ext.HasSuppGroup}
	if ext.SecCtxName != nil {
		mustCName(ext.SecCtxName)
		m.hasSecCtx, m.secName, m.secValue = true, string(ext.SecCtxName), bytes.Clone(ext.SecCtxValue)
	}
	fs.exts = append(fs.exts, m)
}

// label sets the security context of ext, if any, on node id as an
// xattr, as a host filesystem would; fs.mu is held.
func (fs *memFS) label(id uint64, ext *Extensions) {
	if ext.SecCtxName == nil {
		return
	}
	n := fs.nodes[id]
	if n.xattrs == nil {
		n.xattrs = map[string][]byte{}
	}
	n.xattrs[string(ext.SecCtxName)] = bytes.Clone(ext.SecCtxValue)
}

func (fs *memFS) MkdirExt(in *gofuse.MkdirIn, name Name, ext *Extensions, out *gofuse.EntryOut) Status {
	fs.mu.Lock()
	fs.noteExt("MKDIR", ext)
	fs.mu.Unlock()
	st := fs.Mkdir(in, name, out)
	if st == OK {
		fs.mu.Lock()
		fs.label(out.NodeId, ext)
		fs.mu.Unlock()
	}
	return st
}

func (fs *memFS) MknodExt(in *gofuse.MknodIn, name Name, ext *Extensions, out *gofuse.EntryOut) Status {
	fs.mu.Lock()
	fs.noteExt("MKNOD", ext)
	fs.mu.Unlock()
	st := fs.Mknod(in, name, out)
	if st == OK {
		fs.mu.Lock()
		fs.label(out.NodeId, ext)
		fs.mu.Unlock()
	}
	return st
}

func (fs *memFS) SymlinkExt(h *gofuse.InHeader, name, target Name, ext *Extensions, out *gofuse.EntryOut) Status {
	fs.mu.Lock()
	fs.noteExt("SYMLINK", ext)
	fs.mu.Unlock()
	st := fs.Symlink(h, name, target, out)
	if st == OK {
		fs.mu.Lock()
		fs.label(out.NodeId, ext)
		fs.mu.Unlock()
	}
	return st
}

func (fs *memFS) CreateExt(in *gofuse.CreateIn, name Name, ext *Extensions, out *gofuse.CreateOut) Status {
	fs.mu.Lock()
	fs.noteExt("CREATE", ext)
	existed := false
	if d, st := fs.dir(in.NodeId); st == OK {
		_, existed = d.byName[string(name)]
	}
	fs.mu.Unlock()
	st := fs.Create(in, name, out)
	if st == OK && !existed {
		// Only what the request created is labelled.
		fs.mu.Lock()
		fs.label(out.NodeId, ext)
		fs.mu.Unlock()
	}
	return st
}

// lastExt returns the extensions of the latest *Ext call and how many
// calls there were.
func (fs *memFS) lastExt() (memExt, int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.exts) == 0 {
		return memExt{}, 0
	}
	return fs.exts[len(fs.exts)-1], len(fs.exts)
}

// xattr returns node id's xattr name.
func (fs *memFS) xattr(id uint64, name string) ([]byte, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, ok := fs.nodes[id]
	if !ok {
		return nil, false
	}
	v, ok := n.xattrs[name]
	return v, ok
}

func (fs *memFS) Unlink(h *gofuse.InHeader, name Name) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != OK {
		return st
	}
	e, ok := d.byName[string(name)]
	if !ok {
		return syscall.ENOENT
	}
	if isDir(e.node) {
		return syscall.EISDIR
	}
	fs.unlinkEntry(d, e)
	e.node.attr.Nlink--
	return OK
}

func (fs *memFS) Rmdir(h *gofuse.InHeader, name Name) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(h.NodeId)
	if st != OK {
		return st
	}
	e, ok := d.byName[string(name)]
	if !ok {
		return syscall.ENOENT
	}
	if !isDir(e.node) {
		return syscall.ENOTDIR
	}
	if len(e.node.entries) > 0 {
		return syscall.ENOTEMPTY
	}
	fs.unlinkEntry(d, e)
	e.node.attr.Nlink = 0
	d.attr.Nlink--
	return OK
}

const (
	renameNoreplace = 1 << 0
	renameExchange  = 1 << 1
	renameWhiteout  = 1 << 2
)

// isAncestor reports whether a is d or one of its ancestors.
func isAncestor(a, d *memNode) bool {
	for {
		if a == d {
			return true
		}
		if d.parent == d || d.parent == nil {
			return false
		}
		d = d.parent
	}
}

func (fs *memFS) Rename(in *gofuse.RenameIn, oldName, newName Name) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	mustCName(oldName)
	mustCName(newName)
	fs.lastRename = *in
	if in.Flags&^(renameNoreplace|renameExchange) != 0 || in.Flags == renameNoreplace|renameExchange {
		return syscall.EINVAL
	}
	od, st := fs.dir(in.NodeId)
	if st != OK {
		return st
	}
	nd, st := fs.dir(in.Newdir)
	if st != OK {
		return st
	}
	src, ok := od.byName[string(oldName)]
	if !ok {
		return syscall.ENOENT
	}
	dst := nd.byName[string(newName)]
	if isDir(src.node) && isAncestor(src.node, nd) {
		return syscall.EINVAL
	}
	switch {
	case in.Flags&renameNoreplace != 0 && dst != nil:
		return syscall.EEXIST
	case in.Flags&renameExchange != 0:
		if dst == nil {
			return syscall.ENOENT
		}
		if isDir(dst.node) && isAncestor(dst.node, od) {
			return syscall.EINVAL
		}
		src.node, dst.node = dst.node, src.node
		if isDir(src.node) {
			src.node.parent = od
		}
		if isDir(dst.node) {
			dst.node.parent = nd
		}
		if od != nd && isDir(src.node) != isDir(dst.node) {
			if isDir(src.node) { // a directory moved from nd to od
				od.attr.Nlink++
				nd.attr.Nlink--
			} else {
				od.attr.Nlink--
				nd.attr.Nlink++
			}
		}
		return OK
	}
	if dst != nil {
		if dst.node == src.node {
			return OK
		}
		switch {
		case isDir(src.node) && !isDir(dst.node):
			return syscall.ENOTDIR
		case !isDir(src.node) && isDir(dst.node):
			return syscall.EISDIR
		case isDir(dst.node) && len(dst.node.entries) > 0:
			return syscall.ENOTEMPTY
		}
		fs.unlinkEntry(nd, dst)
		if isDir(dst.node) {
			dst.node.attr.Nlink = 0
			nd.attr.Nlink--
		} else {
			dst.node.attr.Nlink--
		}
	}
	n := src.node
	fs.unlinkEntry(od, src)
	fs.link(nd, string(newName), n)
	if isDir(n) {
		n.parent = nd
		od.attr.Nlink--
		nd.attr.Nlink++
	}
	return OK
}

func (fs *memFS) Link(in *gofuse.LinkIn, name Name, out *gofuse.EntryOut) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.Oldnodeid)
	if st != OK {
		return st
	}
	if isDir(n) {
		return syscall.EPERM
	}
	d, st := fs.dir(in.NodeId)
	if st != OK {
		return st
	}
	if _, ok := d.byName[string(name)]; ok {
		return syscall.EEXIST
	}
	fs.link(d, string(name), n)
	n.attr.Nlink++
	fs.ref(n, out)
	return OK
}

func (fs *memFS) Access(in *gofuse.AccessIn) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != OK {
		return st
	}
	if in.Mask&^(gofuse.R_OK|gofuse.W_OK|gofuse.X_OK) != 0 {
		return syscall.EINVAL
	}
	if in.Uid == 0 {
		return OK
	}
	perm := n.attr.Mode & 0o7 // other bits; owner bits when the caller owns it
	if in.Uid == n.attr.Uid {
		perm = n.attr.Mode >> 6 & 0o7
	}
	if in.Mask&^perm != 0 {
		return syscall.EACCES
	}
	return OK
}

func (fs *memFS) StatFs(h *gofuse.InHeader, out *gofuse.StatfsOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, st := fs.node(h.NodeId); st != OK {
		return st
	}
	out.Blocks, out.Bfree, out.Bavail = 1000, 900, 800
	out.Files, out.Ffree = 100, 100-uint64(len(fs.nodes))
	out.Bsize, out.Frsize, out.NameLen = memBlockSize, memBlockSize, MaxNameLen
	return OK
}

func (fs *memFS) SyncFs(h *gofuse.InHeader) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, st := fs.node(h.NodeId); st != OK {
		return st
	}
	fs.syncfs++
	return OK
}

func (fs *memFS) open(n *memNode, flags uint32) uint64 {
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		n.data = n.data[:0]
	}
	fh := fs.nextFh
	fs.nextFh++
	fs.handles[fh] = &memHandle{node: n, flags: flags}
	return fh
}

func (fs *memFS) Create(in *gofuse.CreateIn, name Name, out *gofuse.CreateOut) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != OK {
		return st
	}
	var n *memNode
	if e, ok := d.byName[string(name)]; ok {
		if in.Flags&syscall.O_EXCL != 0 {
			return syscall.EEXIST
		}
		if isDir(e.node) {
			return syscall.EISDIR
		}
		n = e.node
	} else {
		n, st = fs.create(in.NodeId, name, syscall.S_IFREG|(in.Mode&0o7777&^in.Umask), in.Caller)
		if st != OK {
			return st
		}
	}
	out.Fh = fs.open(n, in.Flags)
	fs.ref(n, &out.EntryOut)
	return OK
}

func (fs *memFS) Open(in *gofuse.OpenIn, out *gofuse.OpenOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != OK {
		return st
	}
	if isDir(n) {
		return syscall.EISDIR
	}
	if n.attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return syscall.ENXIO
	}
	out.Fh = fs.open(n, in.Flags)
	return OK
}

func (fs *memFS) Read(in *gofuse.ReadIn, dst [][]byte) (int, Status) {
	for _, d := range dst {
		mustRoom("Read", d)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.lastRead = *in
	h, st := fs.handle(in.NodeId, in.Fh, false)
	if st != OK {
		return 0, st
	}
	if h.flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		return 0, syscall.EBADF
	}
	data := h.node.data
	if in.Offset >= uint64(len(data)) {
		return 0, OK
	}
	data = data[in.Offset:]
	n := 0
	for _, d := range dst {
		c := copy(d, data[n:])
		n += c
		if c < len(d) {
			break
		}
	}
	return n, OK
}

func (fs *memFS) Write(in *gofuse.WriteIn, src [][]byte) (uint32, Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.lastWrite = *in
	h, st := fs.handle(in.NodeId, in.Fh, false)
	if st != OK {
		return 0, st
	}
	if h.flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return 0, syscall.EBADF
	}
	if in.Offset > memMaxFileSize || uint64(in.Size) > memMaxFileSize-in.Offset {
		return 0, syscall.EFBIG
	}
	n := h.node
	off := int(in.Offset)
	end := off + int(in.Size)
	if end > len(n.data) {
		n.data = resize(n.data, end)
	}
	for _, s := range src {
		off += copy(n.data[off:end], s)
	}
	return uint32(off - int(in.Offset)), OK
}

func (fs *memFS) Flush(in *gofuse.FlushIn) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, st := fs.handle(in.NodeId, in.Fh, false); st != OK {
		return st
	}
	fs.flushes++
	return OK
}

func (fs *memFS) Fsync(in *gofuse.FsyncIn) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, st := fs.handle(in.NodeId, in.Fh, false); st != OK {
		return st
	}
	fs.fsyncs++
	return OK
}

func (fs *memFS) Release(in *gofuse.ReleaseIn) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, st := fs.handle(in.NodeId, in.Fh, false); st == OK {
		delete(fs.handles, in.Fh)
	}
}

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
)

func (fs *memFS) Fallocate(in *gofuse.FallocateIn) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	h, st := fs.handle(in.NodeId, in.Fh, false)
	if st != OK {
		return st
	}
	if in.Length == 0 || in.Offset > memMaxFileSize || in.Length > memMaxFileSize {
		return syscall.EINVAL
	}
	if in.Mode == 0 && in.Offset+in.Length > memMaxFileSize {
		return syscall.EFBIG
	}
	n := h.node
	end := int(in.Offset + in.Length)
	switch in.Mode {
	case 0:
		if end > len(n.data) {
			n.data = resize(n.data, end)
		}
	case fallocKeepSize:
	case fallocKeepSize | fallocPunchHole:
		if int(in.Offset) < len(n.data) {
			clear(n.data[in.Offset:min(end, len(n.data))])
		}
	default:
		return syscall.EOPNOTSUPP
	}
	return OK
}

const (
	seekData = 3
	seekHole = 4
)

func (fs *memFS) Lseek(in *gofuse.LseekIn, out *gofuse.LseekOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	h, st := fs.handle(in.NodeId, in.Fh, false)
	if st != OK {
		return st
	}
	size := uint64(len(h.node.data))
	switch in.Whence {
	case seekData, seekHole:
		if in.Offset >= size {
			return syscall.ENXIO
		}
		out.Offset = in.Offset
		if in.Whence == seekHole {
			out.Offset = size
		}
	case 0: // SEEK_SET
		out.Offset = in.Offset
	case 2: // SEEK_END
		out.Offset = size + in.Offset
	default:
		return syscall.EINVAL
	}
	return OK
}

func (fs *memFS) CopyFileRange(in *gofuse.CopyFileRangeIn) (uint32, Status) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	src, st := fs.handle(in.NodeId, in.FhIn, false)
	if st != OK {
		return 0, st
	}
	dst, st := fs.handle(in.NodeIdOut, in.FhOut, false)
	if st != OK {
		return 0, st
	}
	if in.Flags != 0 {
		return 0, syscall.EINVAL
	}
	if src.flags&syscall.O_ACCMODE == syscall.O_WRONLY || dst.flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return 0, syscall.EBADF
	}
	if in.OffOut > memMaxFileSize {
		return 0, syscall.EFBIG
	}
	if in.OffIn >= uint64(len(src.node.data)) {
		return 0, OK
	}
	n := min(in.Len, uint64(len(src.node.data))-in.OffIn, memMaxFileSize-in.OffOut)
	data := src.node.data[in.OffIn : in.OffIn+n]
	end := int(in.OffOut + n)
	if end > len(dst.node.data) {
		// Copy first: src and dst may be the same file.
		data = bytes.Clone(data)
		dst.node.data = resize(dst.node.data, end)
	}
	copy(dst.node.data[in.OffOut:], data)
	return uint32(n), OK
}

func (fs *memFS) OpenDir(in *gofuse.OpenIn, out *gofuse.OpenOut) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.dir(in.NodeId)
	if st != OK {
		return st
	}
	fh := fs.nextFh
	fs.nextFh++
	fs.handles[fh] = &memHandle{node: d, dir: true}
	out.Fh = fh
	return OK
}

func (fs *memFS) ReadDir(in *gofuse.ReadIn, out *DirList) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	h, st := fs.handle(in.NodeId, in.Fh, true)
	if st != OK {
		return st
	}
	d := h.node
	if d != fs.nodes[in.NodeId] {
		return syscall.EBADF
	}
	typ := func(n *memNode) uint32 { return n.attr.Mode & syscall.S_IFMT >> 12 }
	dots := []struct {
		name string
		n    *memNode
	}{{".", d}, {"..", d.parent}}
	for i, e := range dots {
		cookie := uint64(i + 1)
		if cookie <= in.Offset {
			continue
		}
		if _, ok := out.Add([]byte(e.name), e.n.ino, cookie, typ(e.n)); !ok {
			return OK
		}
	}
	// Entries are in cookie order: find the first after in.Offset.
	i := sort.Search(len(d.entries), func(i int) bool { return d.entries[i].cookie > in.Offset })
	for _, e := range d.entries[i:] {
		if !out.Fits(len(e.name)) {
			return OK
		}
		eo, ok := out.Add([]byte(e.name), e.node.ino, e.cookie, typ(e.node))
		if !ok {
			panic("DirList.Add refused an entry that Fits accepted")
		}
		if out.Plus {
			fs.ref(e.node, eo)
		}
	}
	return OK
}

func (fs *memFS) ReleaseDir(in *gofuse.ReleaseIn) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, st := fs.handle(in.NodeId, in.Fh, true); st == OK {
		delete(fs.handles, in.Fh)
	}
}

func (fs *memFS) FsyncDir(in *gofuse.FsyncIn) Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	_, st := fs.handle(in.NodeId, in.Fh, true)
	return st
}

func (fs *memFS) GetXAttr(h *gofuse.InHeader, name Name, dst []byte) (int, Status) {
	mustCName(name)
	mustQueryOrRoom("GetXAttr", dst)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(h.NodeId)
	if st != OK {
		return 0, st
	}
	v, ok := n.xattrs[string(name)]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dst) == 0 {
		return len(v), OK
	}
	if len(dst) < len(v) {
		return 0, syscall.ERANGE
	}
	return copy(dst, v), OK
}

func (fs *memFS) ListXAttr(h *gofuse.InHeader, dst []byte) (int, Status) {
	mustQueryOrRoom("ListXAttr", dst)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(h.NodeId)
	if st != OK {
		return 0, st
	}
	names := make([]string, 0, len(n.xattrs))
	size := 0
	for k := range n.xattrs {
		names = append(names, k)
		size += len(k) + 1
	}
	if len(dst) == 0 {
		return size, OK
	}
	if len(dst) < size {
		return 0, syscall.ERANGE
	}
	sort.Strings(names)
	off := 0
	for _, k := range names {
		off += copy(dst[off:], k)
		dst[off] = 0
		off++
	}
	return off, OK
}

const (
	xattrCreate  = 1
	xattrReplace = 2
)

func (fs *memFS) SetXAttr(in *gofuse.SetXAttrIn, name Name, value []byte) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(in.NodeId)
	if st != OK {
		return st
	}
	_, exists := n.xattrs[string(name)]
	switch {
	case in.Flags&xattrCreate != 0 && exists:
		return syscall.EEXIST
	case in.Flags&xattrReplace != 0 && !exists:
		return syscall.ENODATA
	}
	if n.xattrs == nil {
		n.xattrs = map[string][]byte{}
	}
	n.xattrs[string(name)] = bytes.Clone(value)
	return OK
}

func (fs *memFS) RemoveXAttr(h *gofuse.InHeader, name Name) Status {
	mustCName(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, st := fs.node(h.NodeId)
	if st != OK {
		return st
	}
	if _, ok := n.xattrs[string(name)]; !ok {
		return syscall.ENODATA
	}
	delete(n.xattrs, string(name))
	return OK
}

// --- test helpers ---

// mustCName panics unless the byte after name is the NUL that Name
// promises, so that CString is safe.
func mustCName(name Name) {
	if cap(name) <= len(name) || *(*byte)(unsafe.Add(unsafe.Pointer(name.CString()), len(name))) != 0 {
		panic(fmt.Sprintf("name %q is not NUL-terminated", []byte(name)))
	}
}

// mustRoom panics unless buf has a first byte, as the FileSystem contract
// promises for Readlink's buffer and each of Read's slices: a FileSystem
// may take &buf[0] for a system call.
func mustRoom(method string, buf []byte) {
	if len(buf) == 0 {
		panic(method + " got an empty buffer")
	}
}

// mustQueryOrRoom panics unless dst is nil (a size query) or has a first
// byte, as the contract of GetXAttr and ListXAttr promises.
func mustQueryOrRoom(method string, dst []byte) {
	if dst != nil && len(dst) == 0 {
		panic(method + " got an empty buffer that is not a size query")
	}
}

// lookups returns the lookup count the guest holds on inode ino (0 if it
// holds none).
func (fs *memFS) lookups(ino uint64) uint64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if n, ok := fs.nodes[ino]; ok {
		return n.lookups
	}
	return 0
}

func (fs *memFS) handleCount() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.handles)
}

// contents returns a copy of the data of the regular file at path (names
// separated by '/', relative to the root), or nil, false.
func (fs *memFS) contents(path ...string) ([]byte, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := fs.root
	for _, p := range path {
		if !isDir(n) {
			return nil, false
		}
		e, ok := n.byName[p]
		if !ok {
			return nil, false
		}
		n = e.node
	}
	return bytes.Clone(n.data), true
}

// check verifies the tree's internal consistency: link counts match the
// entries that refer to each inode, parents, and the node table.
func (fs *memFS) check() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	links := map[*memNode]uint32{}
	subdirs := map[*memNode]uint32{}
	var walk func(d *memNode) error
	walk = func(d *memNode) error {
		if len(d.entries) != len(d.byName) {
			return fmt.Errorf("dir %d: %d entries, %d names", d.ino, len(d.entries), len(d.byName))
		}
		for i, e := range d.entries {
			if checkName(Name(e.name)) != OK {
				return fmt.Errorf("dir %d: bad name %q", d.ino, e.name)
			}
			if d.byName[e.name] != e {
				return fmt.Errorf("dir %d: entry %q not indexed", d.ino, e.name)
			}
			if i > 0 && d.entries[i-1].cookie >= e.cookie {
				return fmt.Errorf("dir %d: cookies out of order", d.ino)
			}
			links[e.node]++
			if isDir(e.node) {
				subdirs[d]++
				if e.node.parent != d {
					return fmt.Errorf("dir %d (%q) has parent %d, is in %d", e.node.ino, e.name, e.node.parent.ino, d.ino)
				}
				if err := walk(e.node); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(fs.root); err != nil {
		return err
	}
	links[fs.root] = 0
	for n, l := range links {
		want := l
		if isDir(n) {
			want = 2 + subdirs[n]
		}
		if n.attr.Nlink != want {
			return fmt.Errorf("inode %d: nlink %d, want %d", n.ino, n.attr.Nlink, want)
		}
	}
	for id, n := range fs.nodes {
		if n.ino != id || n.lookups == 0 {
			return fmt.Errorf("node table: id %d -> inode %d with %d lookups", id, n.ino, n.lookups)
		}
	}
	return nil
}
