package frontend_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The hostile cases of ids that must belong together: a request names a
// node id and a handle, and the handle must have been opened on that node,
// as the kind of open file the request wants; and a CREATE's new node id,
// which a guest can guess and FORGET before the reply tells it.
//
// The reference virtiofsd (1.14.0 in the lab when these were written)
// refuses a handle of another node with EBADF as ours does, in all but
// GETATTR (which it serves by the node id, the handle ignored), and a
// RELEASE of one releases nothing there either (it answers EBADF, ours
// OK: Linux ignores the answer). It does not type its handles: a
// directory's handle serves FLUSH and FSYNC there and dies by RELEASE, a
// file's by RELEASEDIR (READ of a directory's handle is EISDIR, READDIR
// of a file's ENOTDIR). The cases log those differences.

func init() { moreHostileCases = append(moreHostileCases, hostileHandleCases) }

const hOpCopyFileRange = 47

// hOtherData is the contents of "other", the second file the handle cases
// open beside the fixture's probe.
var hOtherData = []byte("other file: must not change")

// hOpenOther makes, looks up and opens "other" (read-write); its node id
// and handle go to h.vals.
func hOpenOther(h *hctx) error {
	if err := os.WriteFile(filepath.Join(h.share, "other"), hOtherData, 0o644); err != nil {
		return err
	}
	e, err := h.c.Lookup(fuseclient.RootID, "other")
	if err != nil {
		return err
	}
	o, err := h.c.Open(e.NodeId, syscall.O_RDWR)
	if err != nil {
		return err
	}
	h.vals["other"], h.vals["otherFh"] = e.NodeId, o.Fh
	return nil
}

// hOtherUnchanged checks (ours only) that "other" holds what it did.
func (h *hctx) hOtherUnchanged() error {
	if h.ref {
		return nil
	}
	if b, err := os.ReadFile(filepath.Join(h.share, "other")); err != nil || !bytes.Equal(b, hOtherData) {
		return fmt.Errorf("other changed through a request on another node (%v)", err)
	}
	return nil
}

// hMismatch is one request that names a node id and a handle.
type hMismatch struct {
	what string
	req  []byte
}

// hAllRefused sends each request and wants EBADF for every one.
func (h *hctx) hAllRefused(reqs []hMismatch) error {
	for _, r := range reqs {
		if err := h.expectErrno(r.req, syscall.EBADF); err != nil {
			return fmt.Errorf("%s: %w", r.what, err)
		}
	}
	return nil
}

func hGetattrFhIn(fh uint64) []byte {
	return argsOf(&fuse.GetAttrIn{Flags_: fuse.FUSE_GETATTR_FH, Fh_: fh})
}

func hLseekIn(fh uint64) []byte {
	return argsOf(&fuse.LseekIn{Fh: fh, Whence: 3 /* SEEK_DATA */})
}

func hFlushIn(fh uint64) []byte { return argsOf(&fuse.FlushIn{Fh: fh}) }
func hFsyncIn(fh uint64) []byte { return argsOf(&fuse.FsyncIn{Fh: fh}) }

func hReleaseIn(fh uint64) []byte { return argsOf(&fuse.ReleaseIn{Fh: fh}) }

func hFallocateIn(fh, off, length uint64) []byte {
	return argsOf(&fuse.FallocateIn{Fh: fh, Offset: off, Length: length})
}

func hostileHandleCases() []hcase {
	// usedAfter checks that the handles a refused RELEASE named still
	// serve: FSYNC of probe and of other, READDIR of dir. (FSYNC, not
	// READ: the reference answers a READ in this harness's one-buffer
	// reply EIO.)
	usedAfter := func(h *hctx) error {
		if _, err := h.expectOK(h.req(fuseclient.OpFsync, h.probe, hFsyncIn(h.probeFh), 0), 4096); err != nil {
			return fmt.Errorf("FSYNC of probe with its handle afterwards: %w", err)
		}
		if _, err := h.expectOK(h.req(fuseclient.OpReaddir, h.dir, hReadIn(h.dirFh, 0, 4096), 0), 4096); err != nil {
			return fmt.Errorf("READDIR of dir with its handle afterwards: %w", err)
		}
		if _, err := h.expectOK(h.req(fuseclient.OpFsync, h.vals["other"], hFsyncIn(h.vals["otherFh"]), 0), 4096); err != nil {
			return fmt.Errorf("FSYNC of other with its handle afterwards: %w", err)
		}
		return nil
	}
	// released sends a RELEASE or RELEASEDIR, which ours answers OK
	// whatever it does (Linux ignores the answer; the reference answers
	// EBADF for one it refuses).
	released := func(h *hctx, what string, req []byte) error {
		r, err := h.call(1, req, 4096)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		h.logf("%s: used %d, status %d (%v)", what, r.used, r.status, hErrnoName(r.status))
		if r.used == 0 || (!h.ref && r.status != 0) {
			return fmt.Errorf("%s: used %d status %v, want OK", what, r.used, hErrnoName(r.status))
		}
		return nil
	}
	return []hcase{
		{cat: "fuse", name: "READ, LSEEK, FLUSH, FSYNC and GETATTR naming one file with another's handle", want: "errno reply EBADF for each",
			setup: hOpenOther,
			run: func(h *hctx) error {
				other, otherFh := h.vals["other"], h.vals["otherFh"]
				var reqs []hMismatch
				for _, p := range []struct {
					what     string
					node, fh uint64
				}{{"other with probe's handle", other, h.probeFh}, {"probe with other's handle", h.probe, otherFh}} {
					reqs = append(reqs,
						hMismatch{"READ of " + p.what, h.req(fuseclient.OpRead, p.node, hReadIn(p.fh, 0, 4096), 0)},
						hMismatch{"LSEEK of " + p.what, h.req(fuseclient.OpLseek, p.node, hLseekIn(p.fh), 0)},
						hMismatch{"FLUSH of " + p.what, h.req(fuseclient.OpFlush, p.node, hFlushIn(p.fh), 0)},
						hMismatch{"FSYNC of " + p.what, h.req(fuseclient.OpFsync, p.node, hFsyncIn(p.fh), 0)},
						hMismatch{"GETATTR of " + p.what, h.req(fuseclient.OpGetattr, p.node, hGetattrFhIn(p.fh), 0)})
				}
				return h.hAllRefused(reqs)
			}},
		{cat: "fuse", name: "WRITE, FALLOCATE and SETATTR naming one file with another's handle", want: "errno reply EBADF for each; neither file changes",
			setup: hOpenOther,
			run: func(h *hctx) error {
				other, otherFh := h.vals["other"], h.vals["otherFh"]
				var reqs []hMismatch
				for _, p := range []struct {
					what     string
					node, fh uint64
				}{{"other with probe's handle", other, h.probeFh}, {"probe with other's handle", h.probe, otherFh}} {
					reqs = append(reqs,
						hMismatch{"WRITE of " + p.what, h.req(fuseclient.OpWrite, p.node, append(hWriteIn(p.fh, hProbeSize, 4), "evil"...), 0)},
						hMismatch{"FALLOCATE of " + p.what, h.req(fuseclient.OpFallocate, p.node, hFallocateIn(p.fh, 0, 1<<20), 0)},
						hMismatch{"SETATTR (size) of " + p.what, h.req(fuseclient.OpSetattr, p.node, argsOf(&fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_FH | fuse.FATTR_SIZE, Fh: p.fh, Size: 1}}), 0)})
				}
				if err := h.hAllRefused(reqs); err != nil {
					return err
				}
				return h.hOtherUnchanged()
			}},
		{cat: "fuse", name: "COPY_FILE_RANGE with a handle of another node on either side", want: "errno reply EBADF for each; neither file changes",
			setup: hOpenOther,
			run: func(h *hctx) error {
				other, otherFh := h.vals["other"], h.vals["otherFh"]
				cfr := func(nodeIn, fhIn, nodeOut, fhOut uint64) []byte {
					return h.req(hOpCopyFileRange, nodeIn, argsOf(&fuse.CopyFileRangeIn{FhIn: fhIn, NodeIdOut: nodeOut, FhOut: fhOut, OffOut: hProbeSize, Len: 4}), 0)
				}
				if err := h.hAllRefused([]hMismatch{
					{"source other with probe's handle", cfr(other, h.probeFh, other, otherFh)},
					{"destination other with probe's handle", cfr(other, otherFh, other, h.probeFh)},
					{"destination probe with other's handle", cfr(h.probe, h.probeFh, h.probe, otherFh)},
				}); err != nil {
					return err
				}
				return h.hOtherUnchanged()
			}},
		{cat: "fuse", name: "READDIR, READDIRPLUS and FSYNCDIR naming one directory with another's handle", want: "errno reply EBADF for each; nothing is listed",
			run: func(h *hctx) error {
				return h.hAllRefused([]hMismatch{
					{"READDIR of the root with dir's handle", h.req(fuseclient.OpReaddir, fuseclient.RootID, hReadIn(h.dirFh, 0, 4096), 0)},
					{"READDIRPLUS of the root with dir's handle", h.req(fuseclient.OpReaddirplus, fuseclient.RootID, hReadIn(h.dirFh, 0, 4096), 0)},
					{"FSYNCDIR of the root with dir's handle", h.req(fuseclient.OpFsyncdir, fuseclient.RootID, hFsyncIn(h.dirFh), 0)},
				})
			}},
		{cat: "fuse", name: "a directory's handle for FLUSH, FSYNC, FALLOCATE and LSEEK, a file's for FSYNCDIR", want: "errno reply EBADF for each (the handles are typed)",
			run: func(h *hctx) error {
				return h.hAllRefused([]hMismatch{
					{"FLUSH of dir with its handle", h.req(fuseclient.OpFlush, h.dir, hFlushIn(h.dirFh), 0)},
					{"FSYNC of dir with its handle", h.req(fuseclient.OpFsync, h.dir, hFsyncIn(h.dirFh), 0)},
					{"FALLOCATE of dir with its handle", h.req(fuseclient.OpFallocate, h.dir, hFallocateIn(h.dirFh, 0, 4096), 0)},
					{"LSEEK of dir with its handle", h.req(fuseclient.OpLseek, h.dir, hLseekIn(h.dirFh), 0)},
					{"FSYNCDIR of probe with its handle", h.req(fuseclient.OpFsyncdir, h.probe, hFsyncIn(h.probeFh), 0)},
				})
			}},
		{cat: "fuse", name: "RELEASE and RELEASEDIR naming another node's handle", want: "answered OK, releasing nothing: each handle then serves its own node",
			setup: hOpenOther,
			run: func(h *hctx) error {
				for _, r := range []struct {
					what     string
					op       uint32
					node, fh uint64
				}{
					{"RELEASE of other with probe's handle", fuseclient.OpRelease, h.vals["other"], h.probeFh},
					{"RELEASE of the root with other's handle", fuseclient.OpRelease, fuseclient.RootID, h.vals["otherFh"]},
					{"RELEASEDIR of the root with dir's handle", fuseclient.OpReleasedir, fuseclient.RootID, h.dirFh},
				} {
					if err := released(h, r.what, h.req(r.op, r.node, hReleaseIn(r.fh), 0)); err != nil {
						return err
					}
				}
				return usedAfter(h)
			}},
		{cat: "fuse", name: "RELEASEDIR of a file's handle and RELEASE of a directory's, each on its own node", want: "answered OK, releasing nothing: the handles then serve",
			setup: hOpenOther,
			run: func(h *hctx) error {
				if err := released(h, "RELEASEDIR of probe with its handle", h.req(fuseclient.OpReleasedir, h.probe, hReleaseIn(h.probeFh), 0)); err != nil {
					return err
				}
				if err := released(h, "RELEASE of dir with its handle", h.req(fuseclient.OpRelease, h.dir, hReleaseIn(h.dirFh), 0)); err != nil {
					return err
				}
				return usedAfter(h)
			}},
		hClampedWrite(),
		hCreateRacingForget(),
	}
}

// hClampedWrite maps a 1 MiB file ("g") through a 2 MiB range of the DAX
// window, which clamps the mapping to the file's end, and then sends a
// WRITE that would make g end in a partial page of that range (which the
// window refuses for g: the guest would read zeros there), naming the
// probe node with g's handle: the server checks the probe's mappings (it
// has none), so only the handle check stands between the write and g.
func hClampedWrite() hcase {
	const gSize = 1 << 20
	return hcase{cat: "fuse", name: "WRITE into a DAX-clamped file's partial page, naming an unmapped node with the file's handle", refSkip: refDAX,
		extra: []string{"--dax-window-size", "64M", "--dax-transport", "shmem"},
		opts:  frontend.Options{WindowSize: hWinSize, ProtocolFeatures: frontend.DefaultProtocolFeatures | vhostuser.ProtocolShmem},
		want:  "errno reply EBADF; the file keeps its size (its own node gets EIO, the window's refusal)",
		setup: func(h *hctx) error {
			if err := os.WriteFile(filepath.Join(h.share, "g"), make([]byte, gSize), 0o644); err != nil {
				return err
			}
			e, err := h.c.Lookup(fuseclient.RootID, "g")
			if err != nil {
				return err
			}
			o, err := h.c.Open(e.NodeId, syscall.O_RDWR)
			if err != nil {
				return err
			}
			h.vals["g"], h.vals["gFh"] = e.NodeId, o.Fh
			if _, err := h.expectOK(h.req(fuseclient.OpSetupMap, e.NodeId, hSetupMapIn(0, 2<<20, 2, 0), 0), 4096); err != nil {
				return fmt.Errorf("SETUPMAPPING of g: %w", err)
			}
			// The window's own refusal, on g's node.
			return h.expectErrno(h.req(fuseclient.OpWrite, e.NodeId, append(hWriteIn(o.Fh, gSize, 4), "evil"...), 0), syscall.EIO)
		},
		run: func(h *hctx) error {
			if err := h.expectErrno(h.req(fuseclient.OpWrite, h.probe, append(hWriteIn(h.vals["gFh"], gSize, 4), "evil"...), 0), syscall.EBADF); err != nil {
				return err
			}
			if fi, err := os.Stat(filepath.Join(h.share, "g")); err != nil || fi.Size() != gSize {
				return fmt.Errorf("g grew past its clamped mapping (%v)", err)
			}
			return nil
		}}
}

// hCreateRacingForget sends CREATEs while FORGETs of the node id each is
// about to return (node ids are handed out in order, so the guess is the
// last one plus one) go on the high-priority queue, until the CREATE is
// answered. Whichever comes first, the CREATE must succeed with a handle
// that serves under its node id; the repetition then releases it, forgets
// the node id (again) and unlinks the file. Before, a CREATE whose node id
// was forgotten between its lookup and its handle answered EIO and left
// its file behind (so the next O_EXCL CREATE failed with EEXIST).
func hCreateRacingForget() hcase {
	return hcase{cat: "fuse", name: "CREATE racing FORGETs of the node id it is about to return", want: "every CREATE succeeds with a handle that serves; nothing is left (the file is unlinked each time)",
		absent: []string{"race"},
		setup: func(h *hctx) error {
			e, o, err := h.c.Create(fuseclient.RootID, "race", syscall.O_RDWR|syscall.O_EXCL, syscall.S_IFREG|0o644)
			if err != nil {
				return err
			}
			h.vals["raceLast"] = e.NodeId
			if err := h.c.Release(e.NodeId, o.Fh, syscall.O_RDWR); err != nil {
				return err
			}
			if err := h.c.Forget(e.NodeId, 1); err != nil {
				return err
			}
			return h.c.Unlink(fuseclient.RootID, "race")
		},
		run: func(h *hctx) error {
			guess := h.vals["raceLast"] + 1
			forget := h.req(fuseclient.OpBatchForget, 0, hle(uint32(2), uint32(0), guess, uint64(1), guess+1, uint64(1)), 0)
			create := h.req(fuseclient.OpCreate, fuseclient.RootID, hCreateIn("race", syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL), 0)
			var done sync.WaitGroup
			stop := make(chan struct{})
			var ferr error
			done.Add(1)
			go func() {
				defer done.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := h.c.Raw(0, forget, 0); err != nil {
						ferr = err
						return
					}
				}
			}()
			r, err := h.call(1, create, 4096)
			close(stop)
			done.Wait()
			if err := errors.Join(err, ferr); err != nil {
				return err
			}
			if r.used == 0 || r.status != 0 {
				if !h.ref {
					if _, serr := os.Lstat(filepath.Join(h.share, "race")); serr == nil {
						return fmt.Errorf("CREATE answered %v and left its file behind", hErrnoName(r.status))
					}
				}
				return fmt.Errorf("CREATE: used %d status %v, want success", r.used, hErrnoName(r.status))
			}
			if len(r.body) < 144 {
				return fmt.Errorf("CREATE reply of %d bytes", len(r.body))
			}
			node := binary.LittleEndian.Uint64(r.body[0:])
			fh := binary.LittleEndian.Uint64(r.body[128:])
			h.vals["raceLast"] = node
			// The handle serves under the node id, forgotten or not.
			if _, err := h.expectOK(h.req(fuseclient.OpWrite, node, append(hWriteIn(fh, 0, 4), "race"...), 0), 4096); err != nil {
				return fmt.Errorf("WRITE with the CREATE's handle: %w", err)
			}
			if _, err := h.expectOK(h.req(fuseclient.OpRelease, node, hReleaseIn(fh), 0), 4096); err != nil {
				return err
			}
			if err := h.c.Forget(node, 1); err != nil {
				return err
			}
			return h.c.Unlink(fuseclient.RootID, "race")
		}}
}
