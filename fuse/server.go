package fuse

import (
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// Protocol constants.
const (
	// KernelMajor and KernelMinor are the protocol version this server
	// speaks; older minors down to MinMinor are accepted.
	KernelMajor = 7
	KernelMinor = 41
	MinMinor    = 31

	inHeaderSize  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(fuse.OutHeader{}))
	writeInSize   = int(unsafe.Sizeof(fuse.WriteIn{})) // header included

	// MaxNameLen is the longest path component accepted.
	MaxNameLen = 255
	// inBufSize holds the largest request that is copied whole: a
	// 64 KiB xattr value with its name and header.
	inBufSize = 72 << 10
	// outBufSize bounds replies encoded before they are copied to guest
	// memory (READ data is not: it goes straight to guest memory).
	outBufSize = 128 << 10
)

// Config describes what the server offers at INIT.
type Config struct {
	// Capabilities are the CAP_* flags to accept when the guest offers
	// them (upper 32 bits are flags2).
	Capabilities uint64
	// MaxWrite is the largest WRITE payload; MaxPages bounds a request's
	// data in pages.
	MaxWrite uint32
	MaxPages uint16
	Log      logrus.FieldLogger
	// DAX serves FUSE_SETUPMAPPING and FUSE_REMOVEMAPPING; nil answers
	// them with ENOSYS and offers no window alignment.
	DAX DAX
	// Migration moves the FileSystem's node ids and handles in a live
	// migration (see migrate.go); nil uses the FileSystem itself if it
	// is a MigratableFileSystem.
	Migration MigratableFileSystem
	// InitCheck, when set, sees the CAP_* flags the guest offers in each
	// INIT (upper 32 bits flags2) before the session starts; an error
	// refuses the INIT with EPROTO and no session starts (virtiofsd's
	// --posix-acl=always with a guest that has no ACL support). It logs
	// what it has to say itself.
	InitCheck func(offered uint64) error
}

// DAX is the DAX window as the server needs it (see package dax).
type DAX interface {
	// Epoch counts the window's Resets. The server reads it before it
	// checks that the session is up, for SetupIn.
	Epoch() uint64
	// SetupIn maps length bytes of nodeID's file at foff to window offset
	// moff; flags are FUSE_SETUPMAPPING's (1 write, 2 read). It maps
	// nothing (EIO) if a Reset came after epoch: a SETUPMAPPING that was
	// under way when its session ended must not leave a mapping to the
	// next one.
	SetupIn(epoch, nodeID, foff, length, flags, moff uint64) Status
	// Remove unmaps a window range.
	Remove(moff, length uint64) Status
	// Reset drops every mapping; unmap says whether the VMM can still
	// be asked to unmap.
	Reset(unmap bool)
	// AlignmentLog2 is INIT's map_alignment.
	AlignmentLog2() uint16
	// Clamped reports whether some mapping stops short of the guest's
	// range because its file ended there; only then are Grow and
	// Extending asked. It must be cheap: it is asked after every reply
	// that carries attributes.
	Clamped() bool
	// Grow maps what nodeID's file has grown by into its clamped
	// mappings, before the reply that may show the guest the new size.
	Grow(nodeID uint64) Status
	// Extending is asked before a request makes nodeID's file end at end
	// bytes; an errno refuses the request.
	Extending(nodeID, end uint64) Status
	// InodeDAX reports whether the guest maps nodeID's file when it
	// mounted with dax=inode (FUSE_ATTR_DAX); parent is the directory
	// the request named, or 0.
	InodeDAX(nodeID, parent uint64) bool
}

// Server holds the state of one FUSE session shared by all workers.
type Server struct {
	fs  FileSystem
	ext ExtensionFileSystem // fs, if it takes request extensions; else nil
	cfg Config
	log logrus.FieldLogger

	debug       bool
	mu          sync.Mutex // serialises INIT and DESTROY
	initialized atomic.Bool
	flags       atomic.Uint64 // negotiated capabilities
	badInits    atomic.Uint64 // INITs refused, to bound the log
	outOfFds    atomic.Uint64 // requests refused for want of descriptors
	minor       atomic.Uint32 // negotiated protocol minor (migrate.go)
	panics      panicLog      // requests whose serving panicked (recover.go)
	lockState                 // fs's locks, if it serves them, and the parked SETLKWs (locks.go)
}

// NewServer returns a server that dispatches to fs.
func NewServer(fs FileSystem, cfg Config) *Server {
	if cfg.MaxPages == 0 {
		cfg.MaxPages = 256
	}
	if cfg.MaxWrite == 0 {
		cfg.MaxWrite = uint32(cfg.MaxPages) * 4096
	}
	if cfg.DAX != nil {
		cfg.Capabilities |= fuse.CAP_MAP_ALIGNMENT | fuse.CAP_HAS_INODE_DAX
	}
	ext, _ := fs.(ExtensionFileSystem)
	if ext == nil {
		// Only a FileSystem that takes them gets request extensions.
		cfg.Capabilities &^= fuse.CAP_SECURITY_CTX | fuse.CAP_CREATE_SUPP_GROUP
	}
	lfs, _ := fs.(LockFileSystem)
	if lfs != nil {
		// A LockFileSystem says which locks it serves.
		const lockCaps = fuse.CAP_POSIX_LOCKS | fuse.CAP_FLOCK_LOCKS
		cfg.Capabilities = cfg.Capabilities&^lockCaps | lfs.LockCaps()&lockCaps
	}
	s := &Server{fs: fs, ext: ext, cfg: cfg, log: cfg.Log}
	s.lfs = lfs
	if s.log == nil {
		s.log = logrus.StandardLogger()
	}
	if l, ok := s.log.(*logrus.Logger); ok {
		s.debug = l.IsLevelEnabled(logrus.DebugLevel)
	}
	return s
}

// Negotiated returns the capabilities agreed at INIT.
func (s *Server) Negotiated() uint64 { return s.flags.Load() }

// Reset ends the session as if the guest had sent DESTROY: the device was
// reset or the front-end went away.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initialized.Swap(false) {
		s.destroyLocked()
	}
}

// destroyLocked ends the session's state; s.mu is held.
func (s *Server) destroyLocked() {
	if s.cfg.DAX != nil {
		s.cfg.DAX.Reset(true)
	}
	s.fs.Destroy()
}

// Worker serves requests for one goroutine with its own buffers.
type Worker struct {
	s    *Server
	in   []byte // request header and arguments
	out  []byte // reply header and body
	segs [][]byte
	dir  DirList

	h    *fuse.InHeader
	args []byte // arguments (without extensions)
	// extArea holds the request's extensions (nil when it has none, or
	// for WRITE, whose payload is not copied); ext is where they are
	// decoded.
	extArea []byte
	ext     Extensions
	// namesEnd is where the names that names decoded end in args.
	namesEnd int
	room     int    // bytes the reply body may take
	daxEpoch uint64 // the DAX window's epoch when a SETUPMAPPING's session was checked
	// parker parks requests that wait (ServeParking); parked is set by
	// a handler that parked its request, whose reply is then not
	// written now.
	parker Parker
	parked bool
}

// NewWorker returns a worker with its own buffers.
func (s *Server) NewWorker() *Worker {
	return &Worker{
		s:    s,
		in:   alignedBuffer(inBufSize),
		out:  alignedBuffer(outBufSize),
		segs: make([][]byte, 0, 512),
	}
}

func alignedBuffer(n int) []byte {
	words := make([]uint64, (n+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n)
}

// gather copies from the segments, starting skip bytes in, into dst and
// returns how many bytes it copied.
func gather(dst []byte, segs [][]byte, skip int) int {
	n := 0
	for _, s := range segs {
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		n += copy(dst[n:], s[skip:])
		skip = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

// scatter copies src into the segments and returns how many bytes fit.
func scatter(segs [][]byte, src []byte, skip int) int {
	n := 0
	for _, s := range segs {
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		n += copy(s[skip:], src[n:])
		skip = 0
		if n == len(src) {
			break
		}
	}
	return n
}

// window appends to out the sub-slices of segs covering [off, off+n).
func window(out [][]byte, segs [][]byte, off, n int) [][]byte {
	for _, s := range segs {
		if n == 0 {
			break
		}
		if off >= len(s) {
			off -= len(s)
			continue
		}
		s = s[off:]
		off = 0
		if len(s) > n {
			s = s[:n]
		}
		out = append(out, s)
		n -= len(s)
	}
	return out
}

func total(segs [][]byte) int {
	n := 0
	for _, s := range segs {
		n += len(s)
	}
	return n
}

// Serve handles one request whose readable part is in and writable part is
// out, and returns the number of bytes written to out.
//
// No request can take the daemon down: a panic while serving one (in the
// decoding, the FileSystem, the DAX window) is recovered here, logged (see
// panicLog) and answered with EIO, or with nothing if the request has no
// reply; the worker is then ready for the next request.
func (w *Worker) Serve(in, out [][]byte) (n uint32) {
	// One open-coded defer per request: no allocation, a few
	// instructions when nothing panics.
	defer func() {
		if p := recover(); p != nil {
			n = w.recovered(p, out)
		}
	}()
	// Until serve has decoded this request's header there is no unique
	// to answer.
	w.h = nil
	return w.serve(in, out)
}

// serve is Serve without the recovery.
func (w *Worker) serve(in, out [][]byte) uint32 {
	inLen := total(in)
	if inLen < inHeaderSize {
		return 0
	}
	gather(w.in[:inHeaderSize], in, 0)
	w.h = (*fuse.InHeader)(unsafe.Pointer(&w.in[0]))
	h := w.h
	code := h.Opcode
	var o *op
	if code < uint32(len(ops)) && (ops[code].handle != nil || ops[code].data) {
		o = &ops[code]
	}
	if h.Length < uint32(inHeaderSize) || int(h.Length) > inLen {
		return w.fail(out, o, syscall.EINVAL)
	}
	reqLen := int(h.Length)
	copyLen := reqLen
	if code == opWrite {
		copyLen = min(reqLen, writeInSize)
	}
	if copyLen > len(w.in) {
		return w.fail(out, o, syscall.E2BIG)
	}
	gather(w.in[inHeaderSize:copyLen], in, inHeaderSize)
	ext := int(h.TotalExtlen) * 8
	if ext > reqLen-inHeaderSize {
		return w.fail(out, o, syscall.EINVAL)
	}
	// Extensions sit at the end of the request.
	w.args = w.in[inHeaderSize:min(copyLen, reqLen-ext)]
	w.extArea = nil
	if ext > 0 && copyLen == reqLen {
		w.extArea = w.in[reqLen-ext : reqLen]
	}
	if o == nil {
		return w.reply(out, 0, syscall.ENOSYS)
	}
	if len(w.args) < o.argSize {
		return w.fail(out, o, syscall.EINVAL)
	}
	if code == opSetupmapping && w.s.cfg.DAX != nil {
		w.daxEpoch = w.s.cfg.DAX.Epoch() // before the session check: see DAX.SetupIn
	}
	if code != opInit && !w.s.initialized.Load() {
		return w.fail(out, o, syscall.EIO)
	}
	// Refuse before acting when the guest left no room for the reply: a
	// LOOKUP or CREATE whose answer cannot be delivered must not happen.
	w.room = total(out) - outHeaderSize
	if !o.noReply && w.room < o.replySize {
		return w.reply(out, 0, syscall.EINVAL)
	}
	if o.data {
		// READ and WRITE move their data straight between guest memory
		// and the file; they encode their own reply.
		return o.dataFn(w, in, out)
	}
	n, st := o.handle(w)
	if w.parked {
		// The reply goes out later, from the Pending: out is its.
		w.parked = false
		return 0
	}
	if st == OK && w.s.cfg.DAX != nil {
		w.daxReply(code, n)
	}
	if o.noReply {
		return 0
	}
	return w.reply(out, n, st)
}

// noteOutOfFds tells the operator, the first time and then every 1000th,
// that requests fail for want of file descriptors: the guest sees EMFILE
// or ENFILE and the daemon keeps serving, but the limit may be too low.
func (s *Server) noteOutOfFds(st Status) {
	if n := s.outOfFds.Add(1); n == 1 || n%1000 == 0 {
		s.log.Errorf("No more file descriptors available (%v; %d requests refused so far): consider increasing --rlimit-nofile", st, n)
	}
}

// fail answers a request that could not be decoded, unless its opcode is
// one the guest expects no answer to.
func (w *Worker) fail(out [][]byte, o *op, st Status) uint32 {
	if o != nil && o.noReply {
		return 0
	}
	return w.reply(out, 0, st)
}

// reply writes the out header and n bytes of body from w.out.
func (w *Worker) reply(out [][]byte, n int, st Status) uint32 {
	if st != OK {
		n = 0
		if st == syscall.EMFILE || st == syscall.ENFILE {
			w.s.noteOutOfFds(st)
		}
		if w.s.debug {
			w.s.log.Debugf("%s (opcode %d, unique %d, node %d) failed: %v", OpName(w.h.Opcode), w.h.Opcode, w.h.Unique, w.h.NodeId, st)
		}
	}
	size := outHeaderSize + n
	if total(out) < size {
		if total(out) < outHeaderSize {
			return 0
		}
		// The guest left no room for the reply it asked for.
		size, st, n = outHeaderSize, syscall.EINVAL, 0
	}
	oh := (*fuse.OutHeader)(unsafe.Pointer(&w.out[0]))
	oh.Length = uint32(size)
	oh.Status = -int32(st)
	oh.Unique = w.h.Unique
	return uint32(scatter(out, w.out[:size], 0))
}

// body returns the reply body area, typed.
func body[T any](w *Worker) *T {
	return (*T)(unsafe.Pointer(&w.out[outHeaderSize]))
}

// bodyOf returns the reply body cleared to the size of T.
func bodyOf[T any](w *Worker) (*T, int) {
	var zero T
	size := int(unsafe.Sizeof(zero))
	clear(w.out[outHeaderSize : outHeaderSize+size])
	return body[T](w), size
}

// argsAs returns the request arguments as *T. Serve has checked the size.
func argsAs[T any](w *Worker) *T {
	return (*T)(unsafe.Pointer(&w.in[0]))
}

// names splits the bytes after a fixed-size argument struct into count
// NUL-terminated names, checking each.
func (w *Worker) names(fixed int, dst []Name) Status {
	rest := w.args[fixed:]
	for i := range dst {
		end := -1
		for j, c := range rest {
			if c == 0 {
				end = j
				break
			}
		}
		if end < 0 {
			return syscall.EINVAL
		}
		dst[i] = Name(rest[:end])
		rest = rest[end+1:]
	}
	w.namesEnd = len(w.args) - len(rest)
	return OK
}
