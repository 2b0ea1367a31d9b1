package fuse

import (
	"bytes"
	"encoding/binary"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Opcodes.
const (
	opLookup        = 1
	opForget        = 2
	opGetattr       = 3
	opSetattr       = 4
	opReadlink      = 5
	opSymlink       = 6
	opMknod         = 8
	opMkdir         = 9
	opUnlink        = 10
	opRmdir         = 11
	opRename        = 12
	opLink          = 13
	opOpen          = 14
	opRead          = 15
	opWrite         = 16
	opStatfs        = 17
	opRelease       = 18
	opFsync         = 20
	opSetxattr      = 21
	opGetxattr      = 22
	opListxattr     = 23
	opRemovexattr   = 24
	opFlush         = 25
	opInit          = 26
	opOpendir       = 27
	opReaddir       = 28
	opReleasedir    = 29
	opFsyncdir      = 30
	opAccess        = 34
	opCreate        = 35
	opInterrupt     = 36
	opDestroy       = 38
	opBatchForget   = 42
	opFallocate     = 43
	opReaddirplus   = 44
	opRename2       = 45
	opLseek         = 46
	opCopyFileRange = 47
	opSetupmapping  = 48
	opRemovemapping = 49
	opSyncfs        = 50
	opCount         = 54
)

// op describes how one opcode is decoded.
type op struct {
	name    string
	argSize int // bytes of fixed arguments after the header
	noReply bool
	// replySize is the fixed reply body, or the least room a reply of
	// variable size needs to succeed; Serve checks the guest left room
	// for it before the handler acts, so that a handler can rely on it
	// (see the FileSystem methods' contracts).
	replySize int
	handle    func(w *Worker) (int, Status)
	data      bool // READ/WRITE: dataFn handles the whole request
	dataFn    func(w *Worker, in, out [][]byte) uint32
}

// readlinkMin is the least room READLINK answers in: a target has at least
// one byte, so with none no answer can succeed, and the FileSystem is
// promised a buffer it may take the address of.
const readlinkMin = 1

// maxBackground is INIT's max_background: the most a field of 16 bits
// holds.
const maxBackground = 1<<16 - 1

func sizeOf[T any]() int {
	var zero T
	return int(unsafe.Sizeof(zero))
}

func argSize[T any]() int {
	var zero T
	return int(unsafe.Sizeof(zero)) - inHeaderSize
}

var ops [opCount]op

func init() {
	ops = [opCount]op{
		opInit:          {name: "INIT", argSize: 16, handle: (*Worker).init, replySize: 24},
		opDestroy:       {name: "DESTROY", handle: (*Worker).destroy},
		opLookup:        {name: "LOOKUP", handle: (*Worker).lookup, replySize: entryOutSize},
		opForget:        {name: "FORGET", argSize: argSize[fuse.ForgetIn](), noReply: true, handle: (*Worker).forget},
		opBatchForget:   {name: "BATCH_FORGET", argSize: 8, noReply: true, handle: (*Worker).batchForget},
		opInterrupt:     {name: "INTERRUPT", noReply: true, handle: (*Worker).interrupt},
		opGetlk:         {name: "GETLK", argSize: argSize[fuse.LkIn](), handle: (*Worker).getlk, replySize: sizeOf[fuse.LkOut]()},
		opSetlk:         {name: "SETLK", argSize: argSize[fuse.LkIn](), handle: (*Worker).setlk},
		opSetlkw:        {name: "SETLKW", argSize: argSize[fuse.LkIn](), handle: (*Worker).setlkw},
		opGetattr:       {name: "GETATTR", argSize: argSize[fuse.GetAttrIn](), handle: (*Worker).getattr, replySize: sizeOf[fuse.AttrOut]()},
		opSetattr:       {name: "SETATTR", argSize: argSize[fuse.SetAttrIn](), handle: (*Worker).setattr, replySize: sizeOf[fuse.AttrOut]()},
		opReadlink:      {name: "READLINK", handle: (*Worker).readlink, replySize: readlinkMin},
		opSymlink:       {name: "SYMLINK", handle: (*Worker).symlink, replySize: entryOutSize},
		opMknod:         {name: "MKNOD", argSize: argSize[fuse.MknodIn](), handle: (*Worker).mknod, replySize: entryOutSize},
		opMkdir:         {name: "MKDIR", argSize: argSize[fuse.MkdirIn](), handle: (*Worker).mkdir, replySize: entryOutSize},
		opUnlink:        {name: "UNLINK", handle: (*Worker).unlink},
		opRmdir:         {name: "RMDIR", handle: (*Worker).rmdir},
		opRename:        {name: "RENAME", argSize: 8, handle: (*Worker).rename},
		opRename2:       {name: "RENAME2", argSize: argSize[fuse.RenameIn](), handle: (*Worker).rename2},
		opLink:          {name: "LINK", argSize: argSize[fuse.LinkIn](), handle: (*Worker).link, replySize: entryOutSize},
		opOpen:          {name: "OPEN", argSize: argSize[fuse.OpenIn](), handle: (*Worker).open, replySize: sizeOf[fuse.OpenOut]()},
		opRead:          {name: "READ", argSize: argSize[fuse.ReadIn](), data: true, dataFn: (*Worker).read},
		opWrite:         {name: "WRITE", argSize: argSize[fuse.WriteIn](), data: true, dataFn: (*Worker).write, replySize: sizeOf[fuse.WriteOut]()},
		opStatfs:        {name: "STATFS", handle: (*Worker).statfs, replySize: sizeOf[fuse.StatfsOut]()},
		opRelease:       {name: "RELEASE", argSize: argSize[fuse.ReleaseIn](), handle: (*Worker).release},
		opFsync:         {name: "FSYNC", argSize: argSize[fuse.FsyncIn](), handle: (*Worker).fsync},
		opFlush:         {name: "FLUSH", argSize: argSize[fuse.FlushIn](), handle: (*Worker).flush},
		opOpendir:       {name: "OPENDIR", argSize: argSize[fuse.OpenIn](), handle: (*Worker).opendir, replySize: sizeOf[fuse.OpenOut]()},
		opReaddir:       {name: "READDIR", argSize: argSize[fuse.ReadIn](), handle: (*Worker).readdir},
		opReaddirplus:   {name: "READDIRPLUS", argSize: argSize[fuse.ReadIn](), handle: (*Worker).readdirplus},
		opReleasedir:    {name: "RELEASEDIR", argSize: argSize[fuse.ReleaseIn](), handle: (*Worker).releasedir},
		opFsyncdir:      {name: "FSYNCDIR", argSize: argSize[fuse.FsyncIn](), handle: (*Worker).fsyncdir},
		opAccess:        {name: "ACCESS", argSize: argSize[fuse.AccessIn](), handle: (*Worker).access},
		opCreate:        {name: "CREATE", argSize: argSize[fuse.CreateIn](), handle: (*Worker).create, replySize: sizeOf[fuse.CreateOut]()},
		opFallocate:     {name: "FALLOCATE", argSize: argSize[fuse.FallocateIn](), handle: (*Worker).fallocate},
		opLseek:         {name: "LSEEK", argSize: argSize[fuse.LseekIn](), handle: (*Worker).lseek, replySize: sizeOf[fuse.LseekOut]()},
		opCopyFileRange: {name: "COPY_FILE_RANGE", argSize: argSize[fuse.CopyFileRangeIn](), handle: (*Worker).copyFileRange, replySize: sizeOf[fuse.WriteOut]()},
		opSetupmapping:  {name: "SETUPMAPPING", argSize: 40, handle: (*Worker).setupmapping},
		opRemovemapping: {name: "REMOVEMAPPING", argSize: 4, handle: (*Worker).removemapping},
		opSyncfs:        {name: "SYNCFS", argSize: 8, handle: (*Worker).syncfs},
		opSetxattr:      {name: "SETXATTR", argSize: 8, handle: (*Worker).setxattr},
		opGetxattr:      {name: "GETXATTR", argSize: argSize[fuse.GetXAttrIn](), handle: (*Worker).getxattr},
		opListxattr:     {name: "LISTXATTR", argSize: argSize[fuse.GetXAttrIn](), handle: (*Worker).listxattr},
		opRemovexattr:   {name: "REMOVEXATTR", handle: (*Worker).removexattr},
	}
}

// OpName returns the name of an opcode, for logs.
func OpName(opcode uint32) string {
	if opcode < uint32(len(ops)) && ops[opcode].name != "" {
		return ops[opcode].name
	}
	return "UNKNOWN"
}

var (
	dot    = []byte(".")
	dotdot = []byte("..")
)

// checkName vets a path component from the guest.
func checkName(n Name) Status {
	switch {
	case len(n) == 0:
		return syscall.EINVAL
	case len(n) > MaxNameLen:
		return syscall.ENAMETOOLONG
	case bytes.IndexByte(n, '/') >= 0, bytes.Equal(n, dot), bytes.Equal(n, dotdot):
		return syscall.EINVAL
	}
	return OK
}

// name decodes the single checked path component after fixed bytes of
// arguments.
func (w *Worker) name(fixed int) (Name, Status) {
	var n [1]Name
	if st := w.names(fixed, n[:]); st != OK {
		return nil, st
	}
	return n[0], checkName(n[0])
}

func (w *Worker) init() (int, Status) {
	in := argsAs[fuse.InitIn](w)
	out, size := bodyOf[fuse.InitOut](w)
	out.Major, out.Minor = KernelMajor, KernelMinor
	if in.Major < KernelMajor || (in.Major == KernelMajor && in.Minor < MinMinor) {
		if w.s.badInits.Add(1) <= 10 {
			w.s.log.Errorf("guest speaks FUSE %d.%d; at least %d.%d is needed", in.Major, in.Minor, KernelMajor, MinMinor)
		}
		return 0, syscall.EPROTO
	}
	if in.Major > KernelMajor {
		// Tell the guest our major; it retries INIT with it.
		return 24, OK
	}
	if w.room < size {
		// The table lets through room for the short answer above; a
		// session must not be reset by an INIT that cannot be answered.
		return 0, syscall.EINVAL
	}
	offered := uint64(in.Flags)
	if in.Flags&fuse.CAP_INIT_EXT != 0 && len(w.args) >= argSize[fuse.InitIn]() {
		offered |= uint64(in.Flags2) << 32
	}
	if w.s.cfg.InitCheck != nil && w.s.cfg.InitCheck(offered) != nil {
		return 0, syscall.EPROTO
	}
	flags := offered & w.s.cfg.Capabilities
	if flags&fuse.CAP_INIT_EXT == 0 {
		// Without INIT_EXT the guest never sees flags2.
		flags &= 0xffffffff
	}
	out.Minor = min(in.Minor, KernelMinor)
	out.MaxReadAhead = in.MaxReadAhead
	out.MaxWrite = w.s.cfg.MaxWrite
	out.TimeGran = 1
	out.MaxPages = w.s.cfg.MaxPages
	// Left at 0, the guest keeps at most 12 background requests
	// (readahead, async direct I/O) in flight and marks the share
	// congested at 9. The ring bounds what can be in flight anyway, so
	// lift both limits as far as the fields go.
	out.MaxBackground = maxBackground
	out.CongestionThreshold = maxBackground / 4 * 3
	out.Flags = uint32(flags)
	if flags&fuse.CAP_INIT_EXT != 0 {
		out.Flags2 = uint32(flags >> 32)
	}
	if w.s.cfg.DAX != nil && flags&fuse.CAP_MAP_ALIGNMENT != 0 {
		out.MapAlignment = w.s.cfg.DAX.AlignmentLog2()
	}
	w.s.start(flags, out.Minor)
	w.s.log.Debugf("FUSE INIT %d.%d, flags %#x", in.Major, out.Minor, flags)
	return size, OK
}

// start begins a session with what INIT negotiated, ending the one before
// if the guest sent no DESTROY. If the FileSystem panics, the lock is let
// go and the session stays uninitialised: requests get EIO until an INIT
// succeeds.
func (s *Server) start(flags uint64, minor uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initialized.Swap(false) {
		// A new INIT without DESTROY: start over.
		s.destroyLocked()
	}
	s.flags.Store(flags)
	s.minor.Store(minor)
	s.fs.Init(InitInfo{Flags: flags, Minor: minor})
	s.initialized.Store(true)
}

func (w *Worker) destroy() (int, Status) {
	w.s.Reset()
	return 0, OK
}

func (w *Worker) lookup() (int, Status) {
	name, st := w.name(0)
	if st != OK {
		return 0, st
	}
	out, size := bodyOf[fuse.EntryOut](w)
	return size, w.s.fs.Lookup(w.h, name, out)
}

func (w *Worker) forget() (int, Status) {
	in := argsAs[fuse.ForgetIn](w)
	w.s.fs.Forget(in.NodeId, in.Nlookup)
	return 0, OK
}

func (w *Worker) batchForget() (int, Status) {
	count := int(*(*uint32)(unsafe.Pointer(&w.args[0])))
	entries := w.args[8:]
	if count > len(entries)/16 {
		count = len(entries) / 16
	}
	for i := 0; i < count; i++ {
		e := entries[i*16:]
		w.s.fs.Forget(*(*uint64)(unsafe.Pointer(&e[0])), *(*uint64)(unsafe.Pointer(&e[8])))
	}
	return 0, OK
}

func (w *Worker) getattr() (int, Status) {
	out, size := bodyOf[fuse.AttrOut](w)
	return size, w.s.fs.GetAttr(argsAs[fuse.GetAttrIn](w), out)
}

func (w *Worker) setattr() (int, Status) {
	in := argsAs[fuse.SetAttrIn](w)
	if in.Valid&fuse.FATTR_SIZE != 0 {
		if st := w.daxExtending(w.h.NodeId, in.Size); st != OK {
			return 0, st
		}
	}
	out, size := bodyOf[fuse.AttrOut](w)
	return size, w.s.fs.SetAttr(in, out)
}

func (w *Worker) readlink() (int, Status) {
	return w.s.fs.Readlink(w.h, w.out[outHeaderSize:outHeaderSize+min(4096, w.room)])
}

func (w *Worker) symlink() (int, Status) {
	var n [2]Name
	if st := w.names(0, n[:]); st != OK {
		return 0, st
	}
	if st := checkName(n[0]); st != OK {
		return 0, st
	}
	if len(n[1]) == 0 || len(n[1]) >= 4096 {
		return 0, syscall.EINVAL
	}
	ext, st := w.extensions()
	if st != OK {
		return 0, st
	}
	out, size := bodyOf[fuse.EntryOut](w)
	if ext != nil {
		return size, w.s.ext.SymlinkExt(w.h, n[0], n[1], ext, out)
	}
	return size, w.s.fs.Symlink(w.h, n[0], n[1], out)
}

func (w *Worker) mknod() (int, Status) {
	name, st := w.name(argSize[fuse.MknodIn]())
	if st != OK {
		return 0, st
	}
	ext, st := w.extensions()
	if st != OK {
		return 0, st
	}
	out, size := bodyOf[fuse.EntryOut](w)
	if ext != nil {
		return size, w.s.ext.MknodExt(argsAs[fuse.MknodIn](w), name, ext, out)
	}
	return size, w.s.fs.Mknod(argsAs[fuse.MknodIn](w), name, out)
}

func (w *Worker) mkdir() (int, Status) {
	name, st := w.name(argSize[fuse.MkdirIn]())
	if st != OK {
		return 0, st
	}
	ext, st := w.extensions()
	if st != OK {
		return 0, st
	}
	out, size := bodyOf[fuse.EntryOut](w)
	if ext != nil {
		return size, w.s.ext.MkdirExt(argsAs[fuse.MkdirIn](w), name, ext, out)
	}
	return size, w.s.fs.Mkdir(argsAs[fuse.MkdirIn](w), name, out)
}

func (w *Worker) unlink() (int, Status) {
	name, st := w.name(0)
	if st != OK {
		return 0, st
	}
	return 0, w.s.fs.Unlink(w.h, name)
}

func (w *Worker) rmdir() (int, Status) {
	name, st := w.name(0)
	if st != OK {
		return 0, st
	}
	return 0, w.s.fs.Rmdir(w.h, name)
}

func (w *Worker) renameCommon(fixed int) (int, Status) {
	var n [2]Name
	if st := w.names(fixed, n[:]); st != OK {
		return 0, st
	}
	for _, x := range n {
		if st := checkName(x); st != OK {
			return 0, st
		}
	}
	return 0, w.s.fs.Rename(argsAs[fuse.RenameIn](w), n[0], n[1])
}

func (w *Worker) rename() (int, Status) {
	// RENAME carries only the new parent; widen it to RENAME2's layout
	// with zero flags so that one FileSystem method serves both.
	if !w.widen(8, argSize[fuse.RenameIn]()) {
		return 0, syscall.EINVAL
	}
	return w.renameCommon(argSize[fuse.RenameIn]())
}

// widen moves the argument bytes after from up to start at to, zeroing the
// gap, so that a short legacy layout reads as the current struct.
func (w *Worker) widen(from, to int) bool {
	rest := len(w.args) - from
	if rest < 0 || inHeaderSize+to+rest > len(w.in) {
		return false
	}
	base := w.in[inHeaderSize:]
	copy(base[to:to+rest], base[from:from+rest])
	clear(base[from:to])
	w.args = base[:to+rest]
	return true
}

func (w *Worker) rename2() (int, Status) { return w.renameCommon(argSize[fuse.RenameIn]()) }

func (w *Worker) link() (int, Status) {
	name, st := w.name(argSize[fuse.LinkIn]())
	if st != OK {
		return 0, st
	}
	out, size := bodyOf[fuse.EntryOut](w)
	return size, w.s.fs.Link(argsAs[fuse.LinkIn](w), name, out)
}

func (w *Worker) open() (int, Status) {
	out, size := bodyOf[fuse.OpenOut](w)
	return size, w.s.fs.Open(argsAs[fuse.OpenIn](w), out)
}

func (w *Worker) opendir() (int, Status) {
	out, size := bodyOf[fuse.OpenOut](w)
	return size, w.s.fs.OpenDir(argsAs[fuse.OpenIn](w), out)
}

func (w *Worker) create() (int, Status) {
	name, st := w.name(argSize[fuse.CreateIn]())
	if st != OK {
		return 0, st
	}
	ext, st := w.extensions()
	if st != OK {
		return 0, st
	}
	out, size := bodyOf[fuse.CreateOut](w)
	if ext != nil {
		return size, w.s.ext.CreateExt(argsAs[fuse.CreateIn](w), name, ext, out)
	}
	return size, w.s.fs.Create(argsAs[fuse.CreateIn](w), name, out)
}

func (w *Worker) read(in, out [][]byte) uint32 {
	r := argsAs[fuse.ReadIn](w)
	room := total(out) - outHeaderSize
	if room < 0 {
		return 0
	}
	size := int(r.Size)
	if size > room || size > int(w.s.cfg.MaxPages)*4096 {
		size = min(room, int(w.s.cfg.MaxPages)*4096)
	}
	w.segs = window(w.segs[:0], out, outHeaderSize, size)
	n, st := w.s.fs.Read(r, w.segs)
	clear(w.segs)
	if st != OK {
		return w.reply(out, 0, st)
	}
	oh := (*fuse.OutHeader)(unsafe.Pointer(&w.out[0]))
	oh.Length = uint32(outHeaderSize + n)
	oh.Status = 0
	oh.Unique = w.h.Unique
	scatter(out, w.out[:outHeaderSize], 0)
	return uint32(outHeaderSize + n)
}

func (w *Worker) write(in, out [][]byte) uint32 {
	wr := argsAs[fuse.WriteIn](w)
	dataOff := writeInSize
	if int(wr.Size) > int(w.h.Length)-dataOff || wr.Size > w.s.cfg.MaxWrite {
		return w.reply(out, 0, syscall.EINVAL)
	}
	if st := w.daxExtending(w.h.NodeId, wr.Offset+uint64(wr.Size)); st != OK {
		return w.reply(out, 0, st)
	}
	w.segs = window(w.segs[:0], in, dataOff, int(wr.Size))
	n, st := w.s.fs.Write(wr, w.segs)
	clear(w.segs)
	if st == OK && w.s.cfg.DAX != nil {
		w.daxReply(opWrite, 0)
	}
	o, size := bodyOf[fuse.WriteOut](w)
	o.Size = n
	return w.reply(out, size, st)
}

func (w *Worker) statfs() (int, Status) {
	out, size := bodyOf[fuse.StatfsOut](w)
	return size, w.s.fs.StatFs(w.h, out)
}

// release and releasedir answer RELEASE and RELEASEDIR OK whatever
// happened: the FileSystem's Release returns nothing (Linux ignores the
// answer anyway; see FileSystem.Release).
func (w *Worker) release() (int, Status) {
	in := argsAs[fuse.ReleaseIn](w)
	if w.s.lfs != nil {
		owner, unlock := uint64(0), in.ReleaseFlags&fuse.FUSE_RELEASE_FLOCK_UNLOCK != 0
		if unlock {
			owner = in.LockOwner
		}
		w.s.lfs.ReleaseOwner(in.NodeId, in.Fh, owner, true, unlock)
	}
	w.s.fs.Release(in)
	return 0, OK
}

func (w *Worker) releasedir() (int, Status) {
	w.s.fs.ReleaseDir(argsAs[fuse.ReleaseIn](w))
	return 0, OK
}

func (w *Worker) fsync() (int, Status)    { return 0, w.s.fs.Fsync(argsAs[fuse.FsyncIn](w)) }
func (w *Worker) fsyncdir() (int, Status) { return 0, w.s.fs.FsyncDir(argsAs[fuse.FsyncIn](w)) }
func (w *Worker) flush() (int, Status) {
	in := argsAs[fuse.FlushIn](w)
	st := w.s.fs.Flush(in)
	if w.s.lfs != nil {
		// Whatever Flush answered, the guest's descriptor is closed.
		w.s.lfs.ReleaseOwner(in.NodeId, in.Fh, in.LockOwner, false, false)
	}
	return 0, st
}
func (w *Worker) access() (int, Status) { return 0, w.s.fs.Access(argsAs[fuse.AccessIn](w)) }
func (w *Worker) syncfs() (int, Status) { return 0, w.s.fs.SyncFs(w.h) }
func (w *Worker) fallocate() (int, Status) {
	in := argsAs[fuse.FallocateIn](w)
	// Modes that keep the size, or shift the file's tail, are not checked.
	if in.Mode&(unix.FALLOC_FL_KEEP_SIZE|unix.FALLOC_FL_COLLAPSE_RANGE|unix.FALLOC_FL_INSERT_RANGE) == 0 {
		if st := w.daxExtending(w.h.NodeId, in.Offset+in.Length); st != OK {
			return 0, st
		}
	}
	return 0, w.s.fs.Fallocate(in)
}

// readdirCommon lists into the reply body; an error from ReadDir discards
// the entries it added (see FileSystem.ReadDir).
func (w *Worker) readdirCommon(plus bool) (int, Status) {
	in := argsAs[fuse.ReadIn](w)
	size := min(int(in.Size), outBufSize-outHeaderSize, w.room)
	w.dir.reset(w.out[outHeaderSize:outHeaderSize+size], plus)
	st := w.s.fs.ReadDir(in, &w.dir)
	return w.dir.Len(), st
}

func (w *Worker) readdir() (int, Status)     { return w.readdirCommon(false) }
func (w *Worker) readdirplus() (int, Status) { return w.readdirCommon(true) }

func (w *Worker) lseek() (int, Status) {
	out, size := bodyOf[fuse.LseekOut](w)
	return size, w.s.fs.Lseek(argsAs[fuse.LseekIn](w), out)
}

func (w *Worker) copyFileRange() (int, Status) {
	in := argsAs[fuse.CopyFileRangeIn](w)
	if st := w.daxExtending(in.NodeIdOut, in.OffOut+in.Len); st != OK {
		return 0, st
	}
	n, st := w.s.fs.CopyFileRange(in)
	o, size := bodyOf[fuse.WriteOut](w)
	o.Size = n
	return size, st
}

// removeMappingMax bounds the ranges of one FUSE_REMOVEMAPPING, as the
// guest does (a page of entries).
const removeMappingMax = 256

func (w *Worker) setupmapping() (int, Status) {
	if w.s.cfg.DAX == nil {
		return 0, syscall.ENOSYS
	}
	a := w.args
	le := binary.LittleEndian
	// fh (a) is -1 from Linux: the file is the request's node.
	foff, length, flags, moff := le.Uint64(a[8:]), le.Uint64(a[16:]), le.Uint64(a[24:]), le.Uint64(a[32:])
	return 0, w.s.cfg.DAX.SetupIn(w.daxEpoch, w.h.NodeId, foff, length, flags, moff)
}

func (w *Worker) removemapping() (int, Status) {
	if w.s.cfg.DAX == nil {
		return 0, syscall.ENOSYS
	}
	count := int(binary.LittleEndian.Uint32(w.args))
	entries := w.args[4:]
	if count == 0 || count > removeMappingMax || count > len(entries)/16 {
		return 0, syscall.EINVAL
	}
	for i := 0; i < count; i++ {
		e := entries[i*16:]
		if st := w.s.cfg.DAX.Remove(binary.LittleEndian.Uint64(e), binary.LittleEndian.Uint64(e[8:])); st != OK {
			return 0, st
		}
	}
	return 0, OK
}

func (w *Worker) xattrName(fixed int) (Name, Status) {
	var n [1]Name
	if st := w.names(fixed, n[:]); st != OK {
		return nil, st
	}
	if len(n[0]) == 0 || len(n[0]) > MaxNameLen {
		return nil, syscall.ERANGE
	}
	return n[0], OK
}

func (w *Worker) setxattr() (int, Status) {
	fixed := argSize[fuse.SetXAttrIn]()
	if w.s.flags.Load()&fuse.CAP_SETXATTR_EXT == 0 && !w.widen(8, fixed) {
		return 0, syscall.EINVAL
	}
	if len(w.args) < fixed {
		return 0, syscall.EINVAL
	}
	in := argsAs[fuse.SetXAttrIn](w)
	name, st := w.xattrName(fixed)
	if st != OK {
		return 0, st
	}
	start := fixed + len(name) + 1
	if int(in.Size) > len(w.args)-start || in.Size > 64<<10 {
		return 0, syscall.EINVAL
	}
	return 0, w.s.fs.SetXAttr(in, name, w.args[start:start+int(in.Size)])
}

func (w *Worker) getxattr() (int, Status) {
	in := argsAs[fuse.GetXAttrIn](w)
	name, st := w.xattrName(argSize[fuse.GetXAttrIn]())
	if st != OK {
		return 0, st
	}
	return w.xattrReply(in.Size, func(dst []byte) (int, Status) { return w.s.fs.GetXAttr(w.h, name, dst) })
}

func (w *Worker) listxattr() (int, Status) {
	in := argsAs[fuse.GetXAttrIn](w)
	return w.xattrReply(in.Size, func(dst []byte) (int, Status) { return w.s.fs.ListXAttr(w.h, dst) })
}

// xattrReply answers a size query (size 0) with GetXAttrOut, or copies the
// value into the reply. The FileSystem gets nil for a size query and
// otherwise at least one byte: a value asked for with no room for it is
// answered from a size query, ERANGE unless the value is empty.
func (w *Worker) xattrReply(size uint32, get func([]byte) (int, Status)) (int, Status) {
	if size == 0 {
		if w.room < sizeOf[fuse.GetXAttrOut]() {
			return 0, syscall.EINVAL
		}
		n, st := get(nil)
		o, osize := bodyOf[fuse.GetXAttrOut](w)
		o.Size = uint32(n)
		return osize, st
	}
	size = min(size, 64<<10, uint32(w.room))
	if size == 0 {
		n, st := get(nil)
		if st == OK && n > 0 {
			st = syscall.ERANGE
		}
		return 0, st
	}
	return get(w.out[outHeaderSize : outHeaderSize+int(size)])
}

func (w *Worker) removexattr() (int, Status) {
	name, st := w.xattrName(0)
	if st != OK {
		return 0, st
	}
	return 0, w.s.fs.RemoveXAttr(w.h, name)
}
