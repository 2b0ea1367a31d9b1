package fuseclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// secctxExt appends the security-context extension Linux sends with
// node-creating requests once SECURITY_CTX is negotiated (an empty
// context: fuse_secctx_header{size 8, nr_secctx 0}) and returns the new
// request length.
// The extension's length in 8-byte units goes in the header's
// total_extlen (set from exchange.extLen).
func (c *Client) secctxExt(k *call, off int) (int, uint16) {
	if !c.secctx.Load() {
		return off, 0
	}
	binary.LittleEndian.PutUint32(k.inB[off:], 8)
	binary.LittleEndian.PutUint32(k.inB[off+4:], 0)
	return off + 8, 1
}

// withCall runs fn with a scratch call.
func (c *Client) withCall(fn func(k *call) error) error {
	k, err := c.get()
	if err != nil {
		return err
	}
	defer c.put(k)
	return fn(k)
}

// Init sends FUSE_INIT 7.41 with Options.InitFlags and returns the reply,
// which later calls consult (e.g. for SECURITY_CTX).
func (c *Client) Init() (*fuse.InitOut, error) {
	out := new(fuse.InitOut)
	err := c.withCall(func(k *call) error {
		in := request[fuse.InitIn](k)
		in.Major, in.Minor, in.MaxReadAhead = KernelMajor, KernelMinor, c.opts.MaxReadahead
		in.Flags, in.Flags2 = uint32(c.opts.InitFlags), uint32(c.opts.InitFlags>>32)
		x := exchange{opcode: OpInit, inLen: sizeOf[fuse.InitIn](), outArg: initOutSize}
		n, err := c.roundTrip(k, x)
		if err != nil {
			return err
		}
		if n < compatInitOutSize || n > initOutSize {
			return &ProtocolError{Opcode: OpInit, Msg: fmt.Sprintf("INIT reply of %d bytes", n)}
		}
		copy(unsafe.Slice((*byte)(unsafe.Pointer(out)), initOutSize), k.outB[outHeaderSize:outHeaderSize+n])
		return nil
	})
	if err != nil {
		return nil, err
	}
	if out.Major != KernelMajor {
		return out, &ProtocolError{Opcode: OpInit, Msg: fmt.Sprintf("server speaks FUSE %d.%d", out.Major, out.Minor)}
	}
	c.initOut.Store(out)
	c.secctx.Store(out.Flags&fuse.CAP_INIT_EXT != 0 && out.Flags64()&fuse.CAP_SECURITY_CTX != 0)
	return out, nil
}

// Destroy sends FUSE_DESTROY, as Linux does at unmount. A completion
// without any reply is accepted, as Linux accepts it (the reference
// virtiofsd does not answer DESTROY).
func (c *Client) Destroy() error {
	return c.withCall(func(k *call) error {
		return c.simple(k, exchange{opcode: OpDestroy, inLen: inHeaderSize, nocred: true, emptyOK: true})
	})
}

func (c *Client) entry(k *call, x exchange) (fuse.EntryOut, error) {
	x.outArg = entryOutSize
	n, err := c.roundTrip(k, x)
	if err := fixed(x, n, entryOutSize, err); err != nil {
		return fuse.EntryOut{}, err
	}
	return outAs[fuse.EntryOut](k), nil
}

// Lookup looks name up in directory parent.
func (c *Client) Lookup(parent uint64, name string) (e fuse.EntryOut, err error) {
	err = c.withCall(func(k *call) error {
		end, err := putName(k, inHeaderSize, name)
		if err != nil {
			return err
		}
		e, err = c.entry(k, exchange{opcode: OpLookup, nodeid: parent, inLen: end})
		return err
	})
	return e, err
}

// Forget drops nlookup references to nodeid, on the high-priority queue
// (one device-readable descriptor, no reply), as Linux does.
func (c *Client) Forget(nodeid, nlookup uint64) error {
	return c.withCall(func(k *call) error {
		request[fuse.ForgetIn](k).Nlookup = nlookup
		_, err := c.roundTrip(k, exchange{opcode: OpForget, nodeid: nodeid, inLen: sizeOf[fuse.ForgetIn](), hiprio: true})
		return err
	})
}

// ForgetOne is one entry of a BATCH_FORGET.
type ForgetOne struct {
	NodeID  uint64
	Nlookup uint64
}

// BatchForget forgets several nodes in one high-priority request.
func (c *Client) BatchForget(items []ForgetOne) error {
	return c.withCall(func(k *call) error {
		end := inHeaderSize + 8 + 16*len(items)
		if end > len(k.inB) {
			return fmt.Errorf("fuseclient: %d forgets do not fit one request", len(items))
		}
		binary.LittleEndian.PutUint32(k.inB[inHeaderSize:], uint32(len(items)))
		binary.LittleEndian.PutUint32(k.inB[inHeaderSize+4:], 0)
		for i, it := range items {
			binary.LittleEndian.PutUint64(k.inB[inHeaderSize+8+16*i:], it.NodeID)
			binary.LittleEndian.PutUint64(k.inB[inHeaderSize+16+16*i:], it.Nlookup)
		}
		_, err := c.roundTrip(k, exchange{opcode: OpBatchForget, inLen: end, hiprio: true})
		return err
	})
}

func (c *Client) attr(k *call, x exchange) (fuse.AttrOut, error) {
	x.outArg = attrOutSize
	n, err := c.roundTrip(k, x)
	if err := fixed(x, n, attrOutSize, err); err != nil {
		return fuse.AttrOut{}, err
	}
	return outAs[fuse.AttrOut](k), nil
}

// GetAttr returns nodeid's attributes.
func (c *Client) GetAttr(nodeid uint64) (a fuse.AttrOut, err error) {
	return c.GetAttrFh(nodeid, 0, false)
}

// GetAttrFh is GetAttr through an open handle when withFh.
func (c *Client) GetAttrFh(nodeid, fh uint64, withFh bool) (a fuse.AttrOut, err error) {
	err = c.withCall(func(k *call) error {
		in := request[fuse.GetAttrIn](k)
		if withFh {
			in.Flags_, in.Fh_ = fuse.FUSE_GETATTR_FH, fh
		}
		a, err = c.attr(k, exchange{opcode: OpGetattr, nodeid: nodeid, inLen: sizeOf[fuse.GetAttrIn]()})
		return err
	})
	return a, err
}

// SetAttr changes the attributes in.Valid selects; the header part of in
// is ignored.
func (c *Client) SetAttr(nodeid uint64, in *fuse.SetAttrIn) (a fuse.AttrOut, err error) {
	err = c.withCall(func(k *call) error {
		p := request[fuse.SetAttrIn](k)
		*p = *in
		p.InHeader = fuse.InHeader{}
		a, err = c.attr(k, exchange{opcode: OpSetattr, nodeid: nodeid, inLen: sizeOf[fuse.SetAttrIn]()})
		return err
	})
	return a, err
}

func (c *Client) open(op uint32, nodeid uint64, flags uint32) (o fuse.OpenOut, err error) {
	err = c.withCall(func(k *call) error {
		request[fuse.OpenIn](k).Flags = flags
		x := exchange{opcode: op, nodeid: nodeid, inLen: sizeOf[fuse.OpenIn](), outArg: openOutSize}
		n, err := c.roundTrip(k, x)
		if err := fixed(x, n, openOutSize, err); err != nil {
			return err
		}
		o = outAs[fuse.OpenOut](k)
		return nil
	})
	return o, err
}

// Open opens nodeid with open(2) flags.
func (c *Client) Open(nodeid uint64, flags uint32) (fuse.OpenOut, error) {
	return c.open(OpOpen, nodeid, flags)
}

// Opendir opens directory nodeid.
func (c *Client) Opendir(nodeid uint64) (fuse.OpenOut, error) {
	return c.open(OpOpendir, nodeid, syscall.O_RDONLY|syscall.O_DIRECTORY)
}

// Create creates and opens name in parent.
func (c *Client) Create(parent uint64, name string, flags, mode uint32) (e fuse.EntryOut, o fuse.OpenOut, err error) {
	err = c.withCall(func(k *call) error {
		in := request[fuse.CreateIn](k)
		in.Flags, in.Mode, in.Umask = flags, mode, c.opts.Umask
		end, err := putName(k, sizeOf[fuse.CreateIn](), name)
		if err != nil {
			return err
		}
		end, ext := c.secctxExt(k, end)
		x := exchange{opcode: OpCreate, nodeid: parent, inLen: end, extLen: ext, outArg: entryOutSize + openOutSize}
		n, err := c.roundTrip(k, x)
		if err := fixed(x, n, entryOutSize+openOutSize, err); err != nil {
			return err
		}
		co := outAs[fuse.CreateOut](k)
		e, o = co.EntryOut, co.OpenOut
		return nil
	})
	return e, o, err
}

// Mkdir creates directory name in parent.
func (c *Client) Mkdir(parent uint64, name string, mode uint32) (e fuse.EntryOut, err error) {
	err = c.withCall(func(k *call) error {
		in := request[fuse.MkdirIn](k)
		in.Mode, in.Umask = mode, c.opts.Umask
		end, err := putName(k, sizeOf[fuse.MkdirIn](), name)
		if err != nil {
			return err
		}
		end, ext := c.secctxExt(k, end)
		e, err = c.entry(k, exchange{opcode: OpMkdir, nodeid: parent, inLen: end, extLen: ext})
		return err
	})
	return e, err
}

// Symlink creates name in parent pointing at target.
func (c *Client) Symlink(parent uint64, name, target string) (e fuse.EntryOut, err error) {
	err = c.withCall(func(k *call) error {
		end, err := putName(k, inHeaderSize, name)
		if err != nil {
			return err
		}
		if end, err = putName(k, end, target); err != nil {
			return err
		}
		end, ext := c.secctxExt(k, end)
		e, err = c.entry(k, exchange{opcode: OpSymlink, nodeid: parent, inLen: end, extLen: ext})
		return err
	})
	return e, err
}

func (c *Client) nameOp(op uint32, parent uint64, name string) error {
	return c.withCall(func(k *call) error {
		end, err := putName(k, inHeaderSize, name)
		if err != nil {
			return err
		}
		return c.simple(k, exchange{opcode: op, nodeid: parent, inLen: end})
	})
}

// Unlink removes file name from parent.
func (c *Client) Unlink(parent uint64, name string) error { return c.nameOp(OpUnlink, parent, name) }

// Rmdir removes directory name from parent.
func (c *Client) Rmdir(parent uint64, name string) error { return c.nameOp(OpRmdir, parent, name) }

// Rename renames olddir/oldname to newdir/newname with FUSE_RENAME, as
// Linux does for a rename without flags.
func (c *Client) Rename(olddir uint64, oldname string, newdir uint64, newname string) error {
	return c.withCall(func(k *call) error {
		binary.LittleEndian.PutUint64(k.inB[inHeaderSize:], newdir)
		end, err := putName(k, inHeaderSize+8, oldname)
		if err != nil {
			return err
		}
		if end, err = putName(k, end, newname); err != nil {
			return err
		}
		return c.simple(k, exchange{opcode: OpRename, nodeid: olddir, inLen: end})
	})
}

// Rename2 is Rename with renameat2 flags (RENAME_NOREPLACE, _EXCHANGE).
func (c *Client) Rename2(olddir uint64, oldname string, newdir uint64, newname string, flags uint32) error {
	return c.withCall(func(k *call) error {
		in := request[fuse.RenameIn](k)
		in.Newdir, in.Flags = newdir, flags
		end, err := putName(k, sizeOf[fuse.RenameIn](), oldname)
		if err != nil {
			return err
		}
		if end, err = putName(k, end, newname); err != nil {
			return err
		}
		return c.simple(k, exchange{opcode: OpRename2, nodeid: olddir, inLen: end})
	})
}

// Read reads up to len(p) bytes at off from handle fh of nodeid into p.
func (c *Client) Read(nodeid, fh, off uint64, p []byte) (n int, err error) {
	err = c.withCall(func(k *call) error {
		if err := c.ensureData(k, uint64(len(p))); err != nil {
			return err
		}
		in := request[fuse.ReadIn](k)
		in.Fh, in.Offset, in.Size = fh, off, uint32(len(p))
		x := exchange{opcode: OpRead, nodeid: nodeid, inLen: sizeOf[fuse.ReadIn](), rlen: len(p)}
		got, err := c.roundTrip(k, x)
		if err != nil {
			return err
		}
		if got > len(p) {
			return &ProtocolError{Opcode: OpRead, Msg: fmt.Sprintf("read returned %d bytes for %d asked", got, len(p))}
		}
		n = copy(p, k.dataB[:got])
		return nil
	})
	return n, err
}

// Write writes data at off through handle fh of nodeid and returns the
// count the server reports.
func (c *Client) Write(nodeid, fh, off uint64, data []byte) (n uint32, err error) {
	err = c.withCall(func(k *call) error {
		if err := c.ensureData(k, uint64(len(data))); err != nil {
			return err
		}
		copy(k.dataB, data)
		in := request[fuse.WriteIn](k)
		in.Fh, in.Offset, in.Size = fh, off, uint32(len(data))
		x := exchange{opcode: OpWrite, nodeid: nodeid, inLen: sizeOf[fuse.WriteIn](), wlen: len(data), outArg: 8}
		got, err := c.roundTrip(k, x)
		if err := fixed(x, got, 8, err); err != nil {
			return err
		}
		n = outAs[fuse.WriteOut](k).Size
		if int(n) > len(data) {
			return &ProtocolError{Opcode: OpWrite, Msg: fmt.Sprintf("wrote %d bytes of %d", n, len(data))}
		}
		return nil
	})
	return n, err
}

func (c *Client) release(op uint32, nodeid, fh uint64, flags uint32) error {
	return c.withCall(func(k *call) error {
		in := request[fuse.ReleaseIn](k)
		in.Fh, in.Flags = fh, flags
		return c.simple(k, exchange{opcode: op, nodeid: nodeid, inLen: sizeOf[fuse.ReleaseIn]()})
	})
}

// Release closes handle fh of nodeid (flags are the open flags).
func (c *Client) Release(nodeid, fh uint64, flags uint32) error {
	return c.release(OpRelease, nodeid, fh, flags)
}

// Releasedir closes directory handle fh.
func (c *Client) Releasedir(nodeid, fh uint64) error { return c.release(OpReleasedir, nodeid, fh, 0) }

// Flush is sent on every close(2) of a handle.
func (c *Client) Flush(nodeid, fh uint64) error {
	return c.withCall(func(k *call) error {
		request[fuse.FlushIn](k).Fh = fh
		return c.simple(k, exchange{opcode: OpFlush, nodeid: nodeid, inLen: sizeOf[fuse.FlushIn]()})
	})
}

// Fsync flushes handle fh to storage (only data with datasync).
func (c *Client) Fsync(nodeid, fh uint64, datasync bool) error {
	return c.withCall(func(k *call) error {
		in := request[fuse.FsyncIn](k)
		in.Fh = fh
		if datasync {
			in.FsyncFlags = 1
		}
		return c.simple(k, exchange{opcode: OpFsync, nodeid: nodeid, inLen: sizeOf[fuse.FsyncIn]()})
	})
}

// Syncfs syncs the whole file system (sent on the root, as Linux does).
func (c *Client) Syncfs() error {
	return c.withCall(func(k *call) error {
		*argsAfter[uint64](k) = 0
		return c.simple(k, exchange{opcode: OpSyncfs, nodeid: RootID, inLen: inHeaderSize + 8})
	})
}

// Statfs returns file system statistics.
func (c *Client) Statfs(nodeid uint64) (s fuse.StatfsOut, err error) {
	err = c.withCall(func(k *call) error {
		x := exchange{opcode: OpStatfs, nodeid: nodeid, inLen: inHeaderSize, outArg: statfsOutSize}
		n, err := c.roundTrip(k, x)
		if err := fixed(x, n, statfsOutSize, err); err != nil {
			return err
		}
		s = outAs[fuse.StatfsOut](k)
		return nil
	})
	return s, err
}

// DirEntry is one READDIR entry.
type DirEntry struct {
	Ino  uint64
	Off  uint64 // cookie to continue after this entry
	Type uint32 // DT_* type
	Name string
}

// DirEntryPlus is one READDIRPLUS entry: the directory entry and a lookup
// result (NodeId 0 when the server did not look the entry up).
type DirEntryPlus struct {
	DirEntry
	Entry fuse.EntryOut
}

func (c *Client) readdir(op uint32, nodeid, fh, off uint64, size uint32) ([]byte, error) {
	var out []byte
	err := c.withCall(func(k *call) error {
		if err := c.ensureData(k, uint64(size)); err != nil {
			return err
		}
		in := request[fuse.ReadIn](k)
		in.Fh, in.Offset, in.Size = fh, off, size
		n, err := c.roundTrip(k, exchange{opcode: op, nodeid: nodeid, inLen: sizeOf[fuse.ReadIn](), rlen: int(size)})
		if err != nil {
			return err
		}
		if n > int(size) {
			return &ProtocolError{Opcode: op, Msg: fmt.Sprintf("%d bytes of entries for %d asked", n, size)}
		}
		out = append([]byte(nil), k.dataB[:n]...)
		return nil
	})
	return out, err
}

func parseDirent(b []byte, op uint32) (DirEntry, int, error) {
	if len(b) < direntSize {
		return DirEntry{}, 0, &ProtocolError{Opcode: op, Msg: fmt.Sprintf("truncated dirent of %d bytes", len(b))}
	}
	d := DirEntry{Ino: binary.LittleEndian.Uint64(b), Off: binary.LittleEndian.Uint64(b[8:]),
		Type: binary.LittleEndian.Uint32(b[20:])}
	nl := int(binary.LittleEndian.Uint32(b[16:]))
	if nl == 0 || nl > 1024 || direntSize+nl > len(b) {
		return DirEntry{}, 0, &ProtocolError{Opcode: op, Msg: fmt.Sprintf("dirent name length %d in %d bytes", nl, len(b))}
	}
	d.Name = string(b[direntSize : direntSize+nl])
	size := (direntSize + nl + 7) &^ 7
	return d, min(size, len(b)), nil
}

// Readdir reads directory entries from handle fh starting at cookie off,
// at most size bytes of them.
func (c *Client) Readdir(nodeid, fh, off uint64, size uint32) ([]DirEntry, error) {
	b, err := c.readdir(OpReaddir, nodeid, fh, off, size)
	if err != nil {
		return nil, err
	}
	var out []DirEntry
	for len(b) > 0 {
		d, n, err := parseDirent(b, OpReaddir)
		if err != nil {
			return out, err
		}
		out = append(out, d)
		b = b[n:]
	}
	return out, nil
}

// ReaddirPlus is Readdir with a lookup result per entry.
func (c *Client) ReaddirPlus(nodeid, fh, off uint64, size uint32) ([]DirEntryPlus, error) {
	b, err := c.readdir(OpReaddirplus, nodeid, fh, off, size)
	if err != nil {
		return nil, err
	}
	var out []DirEntryPlus
	for len(b) > 0 {
		if len(b) < entryOutSize {
			return out, &ProtocolError{Opcode: OpReaddirplus, Msg: fmt.Sprintf("truncated entry of %d bytes", len(b))}
		}
		var e DirEntryPlus
		e.Entry = *(*fuse.EntryOut)(unsafe.Pointer(&b[0]))
		d, n, err := parseDirent(b[entryOutSize:], OpReaddirplus)
		if err != nil {
			return out, err
		}
		e.DirEntry = d
		out = append(out, e)
		b = b[entryOutSize+n:]
	}
	return out, nil
}

// Call sends any request: opcode on nodeid with args after the header,
// and returns a copy of the reply payload (at most replyMax bytes are
// offered). Use it for operations without a typed call.
func (c *Client) Call(opcode uint32, nodeid uint64, args []byte, replyMax int) (reply []byte, err error) {
	err = c.withCall(func(k *call) error {
		if inHeaderSize+len(args) > len(k.inB) {
			return fmt.Errorf("fuseclient: %d bytes of arguments do not fit", len(args))
		}
		copy(k.inB[inHeaderSize:], args)
		x := exchange{opcode: opcode, nodeid: nodeid, inLen: inHeaderSize + len(args)}
		if replyMax > 0 {
			if err := c.ensureData(k, uint64(replyMax)); err != nil {
				return err
			}
			x.rlen = replyMax
		}
		n, err := c.roundTrip(k, x)
		if err != nil {
			return err
		}
		reply = append([]byte(nil), k.dataB[:n]...)
		return nil
	})
	return reply, err
}

// Raw sends the bytes in (a whole request, header included, unchecked) in
// one device-readable descriptor on queue q, with one device-writable
// descriptor of outLen bytes (none when 0), and returns the reply bytes
// the device reported as used. Nothing is validated: for hostile tests.
func (c *Client) Raw(q int, in []byte, outLen int) ([]byte, error) {
	var out []byte
	err := c.withCall(func(k *call) error {
		queue := c.fe.Queue(q)
		if queue == nil {
			return fmt.Errorf("fuseclient: no queue %d", q)
		}
		if err := c.ensureData(k, uint64(max(len(in), outLen, 1))*2); err != nil {
			return err
		}
		half := k.dataCap / 2
		copy(k.dataB, in)
		k.bufs = append(k.bufs[:0], bufAt(k.data, len(in)))
		if outLen > 0 {
			k.bufs = append(k.bufs, bufAt(k.data+half, outLen))
		}
		k.req.Bufs, k.req.Readable = k.bufs, 1
		if err := queue.Do(k.req); err != nil {
			if errors.Is(err, frontend.ErrTimeout) {
				k.lost = true
			}
			return err
		}
		n := min(int(k.req.UsedLen), outLen)
		out = append([]byte(nil), k.dataB[half:half+uint64(n)]...)
		return nil
	})
	return out, err
}
